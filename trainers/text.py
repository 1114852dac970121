"""Caption tokenization shared by data preparation and evaluation.

`tokenize` reproduces, in pure Python, what pycocoevalcap's PTBTokenizer produces: the Stanford
PTBTokenizer of CoreNLP 3.4.1 run with `-preserveLines -lowerCase`, then the punctuation tokens
pycocoevalcap drops. Data preparation builds the vocabulary with it, and scoring falls back to it
when Java is missing, so a caption is split the same way everywhere.

How it works: like the JFlex lexer it mirrors, each step tries every rule at the current position
and keeps the longest match (ties go to the earlier rule); a rule's trailing context counts
towards its length but is not consumed. The rules are the subset of PTBLexer.flex that shows up
in captions, checked against the Java tokenizer on the 30k captions of the COCO Karpathy test
fixture plus hand-made edge cases (tests/trainers/test_text.py). Quirks are kept on purpose,
because evaluation sees them too: "(" becomes "-lrb-" (pycocoevalcap only drops the upper-case
form), "don't" becomes "do n't", "cannot" becomes "can not", "3 1/2" stays one token.

Known differences: PTB reads past the end of a line, so "Wii U." is split as a sentence end when
the next caption in its file starts with "A "; a caption tokenized alone cannot see that (1 of the
fixture's 30k captions, no change to any score). Strings glued without spaces in unusual ways
(a URL right after a non-breaking space, say) can also come out differently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

# pycocoevalcap's PUNCTUATIONS, compared with the lower-cased tokens exactly as it does.
DROPPED_TOKENS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Python's \w also holds numerals such as "½" and "²", which PTB does not count as letters.
_NUMERALS = "".join(re.escape(ch) for ch in map(chr, range(0x10000)) if ch.isnumeric() and not ch.isdecimal())
_LETTER = rf"(?:(?![{_NUMERALS}])[^\W\d_]|[\u00ad\u0300-\u036f])"
_ALNUM = rf"(?:{_LETTER}|\d)"
# 3.4.1's JFlex reads \p{Alpha} and \p{Digit} as ASCII: it shows in a few contexts and in "a/b" words.
_NOT_ASCII_LETTER = "[^A-Za-z]"
_APOS = "['\u0092\u2019]"
_APOS_ETC = "['\u0092\u2019`\u0091\u2018\u201b]"
_SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
_SPACE_NL = "[ \t\u00a0\u2000-\u200a\u3000\n\r\u2028\u2029\x0b\x0c\x85]"
_NUM = r"(?:\d*(?:[.:,]\d+)+|\d+)"                                     # 1,000 3.5 12:30 .5
_WORD = rf"{_LETTER}(?:{_LETTER}|\d)*(?:[.!?]{_LETTER}(?:{_LETTER}|\d)*)*"
_REDAUX = rf"{_APOS}(?:[msdMSD]|[rR][eE]|[vV][eE]|[lL][lL])"
_SREDAUX = rf"[nN]{_APOS_ETC}[tT]"
_THING_PART = rf"(?:[dDoOlL]{_APOS_ETC}{_ALNUM})?{_ALNUM}+"                # o'clock, d'etat
_THING = rf"{_THING_PART}(?:[-_\u058a\u2010\u2011]{_THING_PART})*"           # t-shirt, foo_bar
_HYPHENATED = rf"{_ALNUM}(?:{_ALNUM}|[.,])*(?:-{_ALNUM}+)+"                 # 3.5-inch, 1,000-pound
_ACRO = r"[A-Za-z](?:\.[A-Za-z])*"

# Abbreviations that keep their period (PTBLexer's ABBREV1 and ABBREV2 lists). A bracketed first
# letter is case-sensitive ("Pa." is Pennsylvania, "pa." is a word and a full stop).
_ABBREV1 = ("jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|tues|wed|thu|thurs|fri|"
            "ala|ariz|(?-i:A)z|(?-i:A)rk|calif|colo|conn|ct|dak|(?-i:D)el|fla|ga|(?-i:I)ll|ind|kans?|ky|(?-i:L)a|(?-i:M)ass|md|"
            "mich|minn|(?-i:M)iss|mo|mont|neb|nev|okla|(?-i:O)re|(?-i:P)a|penn|tenn|(?-i:T)ex|va|vt|(?-i:W)ash|wisc?|wyo|"
            "inc|cos?|corp|pp?t[yeYE]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq|"
            "jr|sr|bros|(?:ed|ph)\\.d|esq|etc|al|seq|bldg")
_ABBREV2 = ("mr|mrs|ms|mx|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|"
            "pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|"
            "ens|insp|mlle|mme|msgr|sfc|vs|(?-i:v)|alex|wm|jos|cie|a\\.k\\.a|cf|treas|ph|invt|elec|natl|"
            "m[fFtT]g|dept|blvd|rd")
# Capitalised words after which "U.S." ends a sentence (first letter case-sensitive, as in PTBLexer).
_SENTENCE_STARTERS = "|".join(
    f"(?-i:{word[0]}){word[1:]}" for word in (
        "About According Additionally After An A As At But Did During Earlier He Her Here How However If In It "
        "Last Many More Mr\\. Ms\\. Now Once One Other Our She Since So Some Such That The Their Then There "
        "These They This We When While What Who Why Yet You").split())
_APOWORDS = (rf"{_APOS}n{_APOS}?|somethin{_APOS}|ol{_APOS}|{_APOS}em|diff{_APOS_ETC}rent|"
             rf"(?-i:[A-HJ-XZn]){_APOS_ETC}{_LETTER}{{2,}}|{_APOS}[2-9]0s|{_APOS}till?|"
             rf"{_LETTER}+[aeiouy]{_APOS_ETC}(?-i:[aeiouA-Z]){_LETTER}*|{_APOS}cause|"
             rf"cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|O{_APOS_ETC}o")
_QUOTES = "(?:[`\u2018-\u201f\u0082\u0084\u0091-\u0094\u2039\u203a\u00ab\u00bb]{1,2}|['\u0092\u2019])"

_LEFT_SINGLE = re.compile("[\u0082\u008b\u0091\u2018\u201a\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\u0092\u009b\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\u0084\u0093\u201c\u00ab]|[\u0091\u2018]'")
_RIGHT_DOUBLE = re.compile("[\u0094\u201d\u00bb]|[\u0092\u2019]'")


def _latex_quotes(probably_left: bool) -> Callable[[str], str]:
    """PTBLexer's quote normalisation: straight and curly quotes to ` `` ' ''."""

    def convert(token: str) -> str:
        if probably_left:
            token = re.sub("\"|''|'`|`'|&quot;", "``", token.replace("'", "`"))
        else:
            token = re.sub("\"|''|'`|`'|&quot;", "''", token)
        token = _LEFT_SINGLE.sub("`", _RIGHT_SINGLE.sub("'", token))
        return _LEFT_DOUBLE.sub("``", _RIGHT_DOUBLE.sub("''", token))

    return convert


def _same(token: str) -> str:
    return token


def _with_nbsp(token: str) -> str:
    """Tokens that may hold spaces (fractions, phone numbers) get non-breaking ones, as in PTB."""
    return re.sub("[ \t]", "\u00a0", token)


def _acronym_before_sentence(token: str) -> str:
    """"U.S. The" ends a sentence after "U.S."; a lone "B." there is the letter plus a full stop."""
    return token[:-1] if len(token) == 2 else token


_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u20ac": "$"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


class _Rule(NamedTuple):
    """A lexer rule: `pattern` matches the token, optionally followed by `(?=(?P<context>...))`."""

    pattern: re.Pattern
    emit: Callable[[str], str]


def _rule(pattern: str, emit: Callable[[str], str] = _same, context: str | None = None,
          caseless: bool = True) -> _Rule:
    if context is not None:
        pattern = f"(?:{pattern})(?=(?P<context>{context}))"
    return _Rule(re.compile(pattern, re.IGNORECASE if caseless else 0), emit)


# In PTBLexer.flex order: on equal lengths the earlier rule wins.
_RULES = (
    _rule(r"c\+\+|[cf]#"),
    _rule("can", context="not"),                                             # cannot -> can not
    _rule("'t", context="was"),                                              # 'twas -> 't was
    _rule(f"{_APOS}t", context="is"),
    _rule("gon|wan", context="na"),                                          # gonna -> gon na
    _rule("got", context="ta"),
    _rule("lem|gim", context="me"),
    _rule(r"</?[A-Za-z][A-Za-z0-9_:.\-]*[ ]*/?>"),                            # <b>
    _rule("&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", lambda _: "--"),
    _rule("&amp;", lambda _: "&"),
    _rule(_WORD, context=_REDAUX),                                           # man|'s
    _rule("[A-Za-z]*[A-MO-Za-mo-z]", context=_SREDAUX, caseless=False),      # do|n't
    _rule(_WORD),
    _rule(_APOWORDS),                                                        # 'n' 'em ma'am
    _rule(rf"y{_APOS}", context=_LETTER),                                    # y'|all
    _rule(r"(?:ftp|https?|mailto)://[^ \t\n\f\r\"<>|(){}\[\]]+[^ \t\n\f\r\"'<>|.!?(){},;:&\[\]-]"),
    _rule(r"www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"),
    _rule(r"(?:[^ \t\n\f\r\"`'<>|.!?(){}\u002c-\u005f$]+\.)+(?i:com|net|org|edu)(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?",
          caseless=False),  # [,-_] is a range that holds the upper-case letters
    _rule(r'[a-zA-Z0-9][^ \t\n\f\r"<>|(){}\u00a0]*@(?:[^ \t\n\f\r"<>|(){}.\u00a0]+\.)*'
          r'[^ \t\n\f\r"<>|(){}.\u00a0]+'),                                     # e-mail
    _rule(rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_LETTER}+"),                          # @user #tag
    _rule(_REDAUX, _latex_quotes(False), context=_NOT_ASCII_LETTER),         # 's
    _rule(_SREDAUX, _latex_quotes(False), context=_NOT_ASCII_LETTER),        # n't
    _rule(r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}"),                                 # dates
    _rule(rf"[-+]?{_NUM}"),
    _rule("[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    _rule(r"(?:\d{1,4}[- \u00a0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", _with_nbsp),  # 3 1/2
    _rule("[\u00bc\u00bd\u00be\u2153-\u215e]", lambda frac: _FRACTIONS.get(frac, frac)),
    _rule(r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S&P-500|S&Ls|Cap'n|c'est"),
    _rule(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),  # tub/shower
    _rule(r"[A-Z]*\$|#", caseless=False),
    _rule("[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20aa\u20ac\u20a4\uffe0\uffe1\uffe5\uffe6]",
          lambda sign: _CURRENCY.get(sign, sign)),
    _rule(rf"{_ACRO}\.", _acronym_before_sentence,
          context=rf"{_SPACE_NL}+(?:{_SENTENCE_STARTERS})(?:{_SPACE_NL}|[?!])"),
    _rule(r"(?:ca|figs?|prop|nos?|sect?s?|arts?|paras?|bldg|pp|op|(?-i:Pt)|rs)\.", context=rf"{_SPACE_NL}?\d"),
    _rule(r"(?:So|No)\.", context=rf"{_SPACE_NL}+(?:Africa|Korea|Cal)"),
    _rule(r"(?:pt[eyEY]|co)\.", context=rf"{_SPACE}(?:ltd|lim)"),
    _rule(rf"(?:{_ABBREV1})\.", context="(?s:..)|"),  # the context beats "etc.a" as a WORD
    _rule(rf"(?:{_ABBREV2}|{_ACRO})\."),
    _rule(rf"(?:{_ABBREV2}|{_ACRO})", context=_SPACE),
    _rule(_ACRO, context=_SPACE_NL),
    _rule(rf"{_APOS}\d\d", context=_SPACE_NL),                              # '90
    _rule(rf"{_WORD}\.", context="[,;:\u3001]"),                             # word.,
    _rule(rf"{_THING}\.", context="[,;:\u3001]"),
    _rule(r"(?:\(\d{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:\d{2,4}[\- \u00a0])?\d{2,4}[\- \u00a0])\d{3,4}[\- \u00a0]?\d{3,5}"
          r"|(?:(?:\+\+?)?\d{2,4}\.)?\d{2,4}\.\d{3,4}\.\d{3,5}",
          lambda phone: _with_nbsp(phone).replace("(", "-LRB-").replace(")", "-RRB-")),
    _rule("\"|''|&quot;", _latex_quotes(True), context="[A-Za-z0-9$]"),
    _rule("\"|''|&quot;", _latex_quotes(False)),
    _rule("<|&lt;", lambda _: "<"),
    _rule(">|&gt;", lambda _: ">"),
    _rule(r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]", lambda smiley: smiley.replace("(", "-LRB-").replace(")", "-RRB-"),
          context="[^A-Za-z0-9]", caseless=False),
    _rule(r"[(){}\[\]]", lambda bracket: _BRACKETS[bracket]),
    _rule(r"-+", lambda dashes: "--" if 3 <= len(dashes) <= 4 else dashes),
    _rule("\\.\\.\\.+|[\u0085\u2026]|\\.[ \u00a0](?:\\.[ \u00a0])+\\.", lambda _: "..."),
    _rule(r"@+|#+|_+|\*+|(?:\\\*){1,3}|[,;:\u3001]|[?!]+|=+|/"),
    _rule("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"),
    _rule(_THING),
    _rule(_HYPHENATED),
    _rule(r"[A-Z]+(?:[+&][A-Z]+)+", caseless=False),                          # AT&T
    # An opening quote before a word; a right single quote there is read as "'s", "'d", ... instead.
    _rule(f"(?![\u2019\u0092]){_QUOTES}", _latex_quotes(True), context=rf"{_LETTER}[^ \t\u00a0\u2000-\u200a\u3000\n]"),
    _rule(f"(?![\u2019\u0092]){_QUOTES}", _latex_quotes(True), context=rf"[AaIiUu]{_SPACE_NL}"),
    _rule(_QUOTES, _latex_quotes(False)),
    _rule(_REDAUX, _latex_quotes(False)),
    _rule(_SREDAUX, _latex_quotes(False)),
    _rule(r"<<|>>"),
)
_SKIPPED = re.compile("[\\s\u200b\u200e\u200f\ufeff\x00-\x1f\x7f]+|&nbsp;|[\U00010000-\U0010ffff]")
# Fast paths for what most of a caption is (the rules would give the same tokens, only slower):
# a plain word before a space, a comma or a full stop, and a comma or full stop before a space.
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?=[,;]?[ \t\n]|(?P<stop>\.)[ \t\n])")
_PLAIN_PUNCTUATION = re.compile(r"[,;.](?=[ \t\n])(?! \.)")
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_ABBREVIATION = re.compile(rf"(?:{_ABBREV1}|{_ABBREV2}|{_ACRO}|ca|figs?|prop|nos?|sect?s?|arts?|paras?|pp|op|Pt|rs|"
                           rf"So|No|pt[eyEY]|co)\.", re.IGNORECASE)


def _is_plain_word(match: re.Match) -> bool:
    """Whether the rules would return this word unchanged: not "cannot", not an abbreviation's "Mr"."""
    word = match.group(0)
    if match.group("stop") and _ABBREVIATION.fullmatch(word + "."):
        return False
    return word.lower() not in _SPLIT_WORDS


def _next_token(text: str, position: int) -> tuple[str, int]:
    """The longest rule match at `position`: (token, where the next token starts)."""
    best_length, best_end, best_rule = 0, position + 1, None
    for rule in _RULES:
        match = rule.pattern.match(text, position)
        if match is None:
            continue
        context = match.groupdict().get("context") or ""
        length = match.end() - position + len(context)
        if length > best_length and match.end() > position:
            best_length, best_end, best_rule = length, match.end(), (rule, match.group(0))
    if best_rule is None:
        return text[position], position + 1  # a symbol no rule knows stands alone
    rule, token = best_rule
    return rule.emit(token), best_end


def _ptb_tokens(text: str) -> list[str]:
    """PTB tokens of one caption, lower-cased, punctuation still in ("-lrb-", ".", "``")."""
    text = text.replace("\u00ad", "") + "\n"  # soft hyphens vanish; the newline ends the line as in PTB
    tokens: list[str] = []
    position = 0
    while position < len(text):
        skipped = _SKIPPED.match(text, position)
        if skipped:
            position = skipped.end()
            continue
        plain = _PLAIN_WORD.match(text, position)
        punctuation = _PLAIN_PUNCTUATION.match(text, position)
        if plain and _is_plain_word(plain):
            token, position = plain.group(0), plain.end()
        elif punctuation:
            token, position = punctuation.group(0), punctuation.end()
        else:
            token, position = _next_token(text, position)
        tokens.append(token.lower())
    return tokens


def tokenize(text: str) -> list[str]:
    """Split a caption as pycocoevalcap does: PTB tokens, lower-cased, punctuation dropped.

    "A man's dog doesn't run." -> ["a", "man", "'s", "dog", "does", "n't", "run"]
    """
    return [token for token in _ptb_tokens(text) if token not in DROPPED_TOKENS]
