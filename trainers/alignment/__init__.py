"""Karpathy & Fei-Fei 2015's visual-semantic alignment model (`trainer: alignment`).

    regions.py         image fragments: grid cells or a detector's boxes, with their CNN features
    model.py           v_i = W_m CNN(I_b) + b_m and the bidirectional RNN of eqs. (2)-(6)
    objective.py       S_kl = Σ_t max_i v_iᵀ s_t and the max-margin loss of eq. (9)
    retrieval.py       R@1/5/10 and median rank, image->sentence and sentence->image
    mrf.py             words -> regions by dynamic programming over the chain MRF (β)
    region_captions.py the generator trained on the region-snippet pairs
    recipe.py          training, as `orch train` / `orch run` call it (trainers.training.run_training)
    aligner.py         a trained model on new images and sentences (`orch align`), its export
"""
