"""The phrase rules of the prompt-injection model: hand-written patterns, one binary feature each.

Why this exists: a few phrasings ("ignore all previous instructions", "vergiss alle bisherigen
Anweisungen", "you are now DAN") are the backbone of most attacks and are easier to state than to
learn from a few thousand examples; each rule is one feature whose weight the model learns (a
rule that also fires on benign text simply earns a small weight). Rules run on the normalised
text (lower-cased, except `CASED_RULES`), and only when the text contains their trigger words:
the compiled core's `Lexicon` finds those words in one pass, so a benign prompt usually runs no
regex at all.
"""

from __future__ import annotations

import re

from .ngram import Lexicon

__all__ = ["CASED_RULES", "RULES", "matched_rules"]

_W = r"\W+"  # any run of separators between two words
_SKIP = r"(?:\w+\W+){0,5}?"  # up to five filler words ("ignore all of the above instructions")
_TARGET_EN = (
    r"(?:instructions?|prompts?|rules|directions|guidelines|commands|orders|context|tasks"
    r"|assignments|information|directives|constraints|programming|documents|articles)"
)
_TARGET_DE = (
    r"(?:anweisungen|instruktionen|befehle|aufgaben|aufträge|regeln|vorgaben|informationen"
    r"|angaben|alles|anleitungen|richtlinien|dokumente|artikel)"
)


def _rule(triggers: str, pattern: str) -> tuple[tuple[frozenset[str], ...], str]:
    """A rule with its trigger words: "a b | c d" means (a or b) and (c or d) must be tokens.

    The triggers are words every match of the pattern contains, so checking them against the
    text's token set first skips the regex on almost every benign prompt without changing what
    the rule matches (tests/unit/sidecar/test_injection.py checks that on real prompts).
    """
    return tuple(frozenset(part.split()) for part in triggers.split("|")), pattern


# Phrase rules, matched on lower-cased normalised text. Each is one binary feature whose weight
# the model learns, so a rule that also fires on benign text simply earns a small weight.
RULES: dict[str, tuple[tuple[frozenset[str], ...], str]] = {
    "ignore_target": _rule(
        "ignore disregard forget skip drop override bypass abandon discard erase | instruction "
        "instructions prompt prompts rules directions guidelines commands orders context tasks "
        "assignments information directives constraints programming documents articles",
        (
            rf"\b(?:ignore|disregard|forget|skip|drop|override|bypass|abandon|discard|erase)"
            rf"{_W}{_SKIP}{_TARGET_EN}\b"
        ),
    ),
    "ignore_previous": _rule(
        "ignore disregard forget skip drop override abandon discard erase leave | previous prior "
        "above preceding earlier former foregoing initial original",
        (
            rf"\b(?:ignore|disregard|forget|skip|drop|override|abandon|discard|erase|leave)"
            rf"{_W}(?:\w+\W+){{0,3}}?(?:previous|prior|above|preceding|earlier|former|foregoing"
            rf"|initial|original)\b"
        ),
    ),
    "forget_everything": _rule(
        "forget ignore disregard | everything",
        rf"\b(?:forget|ignore|disregard){_W}(?:about{_W})?everything\b",
    ),
    "new_task": _rule(
        "new now | task instruction instructions assignment rules focus concentrate",
        rf"\bnew{_W}(?:task|instructions?|assignment|rules)\b"
        rf"|\bnow{_W}(?:focus|concentrate){_W}on\b",
    ),
    # Switching the model's identity for good; plain role-play ("act as a ...", "pretend to
    # be ...") is an ordinary request and is left to the n-gram weights.
    "role_switch": _rule(
        "now character longer",
        (
            rf"\b(?:you{_W}are{_W}now|from{_W}now{_W}on{_W}you|stay{_W}in{_W}character"
            rf"|you{_W}will{_W}now{_W}(?:act|be|respond|answer)|you{_W}are{_W}no{_W}longer)\b"
        ),
    ),
    "jailbreak_names": _rule(
        "anything developer jailbroken evil override",
        (
            rf"\b(?:do{_W}anything{_W}now|developer{_W}mode{_W}(?:enabled|output)|jailbroken"
            rf"|evil{_W}(?:bot|ai|confidant)|(?:admin|sudo|root|debug|maintenance){_W}override)\b"
        ),
    ),
    "no_limits": _rule(
        "restriction restrictions limitation limitations limits filter filters filtering "
        "censorship rules guidelines boundaries ethics moral morals policies",
        (
            rf"\b(?:no|without|free{_W}(?:of|from)|beyond|not{_W}bound{_W}by|remove\w*)"
            rf"{_W}(?:any{_W})?(?:restrictions?|limitations?|limits|filters?|filtering|censorship"
            rf"|rules|guidelines|boundaries|ethics|morals?|policies)\b"
        ),
    ),
    "policy": _rule(
        "policy policies",
        rf"\b(?:openai|content|usage){_W}polic(?:y|ies)\b",
    ),
    "never_refuse": _rule(
        "refuse decline warning warnings disclaimer disclaimers",
        (
            rf"\b(?:never|not|don\W?t|cannot|can\W?t|won\W?t){_W}(?:\w+\W+)?(?:refuse|decline)\b"
            rf"|\bwithout{_W}(?:any{_W})?(?:warnings?|disclaimers?)\b"
        ),
    ),
    "system_prompt": _rule(
        "system initial original hidden secret full | prompt message instruction instructions",
        (
            rf"\bsystem{_W}(?:prompt|message|instructions?)\b"
            rf"|\b(?:initial|original|hidden|secret|full){_W}(?:prompt|instructions)\b"
        ),
    ),
    "reveal": _rule(
        "reveal show print output repeat display leak spell | prompt prompts instructions "
        "password passwords secret secrets key keys",
        (
            rf"\b(?:reveal|show|print|output|repeat|display|leak|spell)"
            rf"{_W}(?:me{_W})?(?:\w+\W+){{0,3}}?(?:prompt|instructions|password|secret|api{_W}key)s?\b"
        ),
    ),
    "what_above": _rule(
        "written above before",
        (
            rf"\bwhat{_W}(?:was|is){_W}written{_W}(?:above|before|at{_W}the{_W}beginning)"
            rf"|\b(?:text|words|sentences?){_W}(?:above|before{_W}this)\b"
        ),
    ),
    "just_say": _rule(
        "just only say include",
        (
            rf"\b(?:just|only){_W}(?:say|output|print|write|answer{_W}with|respond{_W}with)\b"
            rf"|\bsay{_W}that{_W}you\b|\binclude{_W}that{_W}you\b"
        ),
    ),
    # Flattery followed by a pivot ("Well done! Now ...") hands the model a new task.
    "praise_pivot": _rule(
        "now | well good great excellent very that simply fantastic congratulations",
        (
            r"\b(?:well done|good job|great job|excellent (?:work|performance)|very good|very well"
            r"|that is done|that is enough|simply great|fantastic|congratulations)\b.{0,80}?"
            rf"\b(?:now|but now){_W}(?:\w+\W+){{0,3}}?"
            r"(?:tasks?|instructions?|write|focus|say|help)\b"
        ),
    ),
    "tasks_follow": _rule(
        "follow followed",
        rf"\b(?:now|further|new){_W}(?:\w+\W+)?(?:tasks?|instructions?)"
        rf"{_W}(?:follow|are{_W}followed)\b",
    ),
    # Steering the answer away from the retrieved context (RAG injection).
    "context_override": _rule(
        "article articles document documents context source sources told",
        (
            rf"\b(?:not|instead{_W}of|rather{_W}than|disregarding|regardless{_W}of|despite"
            rf"|without{_W}looking{_W}at){_W}(?:\w+\W+){{0,3}}?(?:articles?|documents?|context"
            rf"|sources?|what{_W}you\W*ve{_W}been{_W}told)\b"
        ),
    ),
    "make_up": _rule(
        "make state claim declare",
        rf"\bmake{_W}(?:something|it|stuff){_W}up\b|\b(?:state|claim|declare){_W}that\b",
    ),
    "stop_command": _rule(
        "stop attention achtung stopp",
        (
            rf"\b(?:stop|attention|achtung|stopp){_W}(?:\w+\W+){{0,2}}?"
            rf"(?:write|say|print|output|schreib\w*|sag\w*)\b"
        ),
    ),
    "de_pivot": _rule(
        "jetzt nun",
        (
            rf"\b(?:gut{_W}gemacht|sehr{_W}gut|ausgezeichnete{_W}leistung|super{_W}gemacht"
            rf"|das{_W}ist{_W}erledigt|das{_W}genügt|herzlichen{_W}glückwunsch)\b.{{0,80}}?"
            rf"\b(?:jetzt|nun)\b|\b(?:nun|jetzt){_W}folgen{_W}(?:neue|weitere)\b"
        ),
    ),
    "de_ignore_target": _rule(
        "anweisungen instruktionen befehle aufgaben aufträge regeln vorgaben informationen "
        "angaben alles anleitungen richtlinien dokumente artikel",
        (
            rf"\b(?:vergiss|vergessen{_W}sie|ignorier\w*|missacht\w*|verwirf|vernachlässig\w*)"
            rf"{_W}{_SKIP}{_TARGET_DE}\b"
        ),
    ),
    "de_all_previous": _rule(
        "vergiss alle sämtliche abweichend",
        (
            rf"\bvergiss{_W}(?:alles|alle)\b|\b(?:alle|sämtliche){_W}(?:vorherigen|bisherigen"
            rf"|obigen|vorangehenden|vorangegangenen|früheren){_W}(?:\w+\W+)?{_TARGET_DE}\b"
            rf"|\babweichend{_W}(?:zu|von){_W}(?:den{_W})?(?:vorherigen|bisherigen)\b"
        ),
    ),
    "de_new_task": _rule(
        "neue konzentriere",
        (
            rf"\bneue{_W}(?:aufgabe|aufgaben|anweisungen?)\b"
            rf"|\bkonzentriere{_W}dich{_W}(?:jetzt|nun){_W}auf\b"
        ),
    ),
    "de_role_switch": _rule(
        "bist tu rolle fungieren",
        (
            rf"\b(?:du{_W}bist{_W}(?:jetzt|nun|ab{_W}jetzt)|(?:ab{_W})?(?:jetzt|nun){_W}bist{_W}du"
            rf"|stell{_W}dir{_W}vor{_W}du{_W}bist|tu{_W}so{_W}als|spiele{_W}die{_W}rolle"
            rf"|als{_W}\w+{_W}fungieren|fungieren{_W}sie{_W}als)\b"
        ),
    ),
    "de_reveal": _rule(
        "zeig zeige gib nenne verrate drucke wiederhole",
        (
            rf"\b(?:zeige?|gib|nenne|verrate|drucke|wiederhole){_W}(?:\w+\W+){{0,3}}?"
            rf"(?:prompt\w*|anweisungen|passwort|systemprompt)\b"
        ),
    ),
    "other_lang_ignore": _rule(
        "instrucciones instructions instrukcije инструкции consignes reglas règles",
        (
            r"\b(?:olvid\w+|ignor\w+|oubli\w+|zaboravi|забудь\w*|игнорир\w*)\W+(?:\w+\W+){0,3}?"
            r"(?:instrucciones|instructions|instrukcije|инструкции|consignes|reglas|règles)\b"
        ),
    ),
}
# Case matters for these: "DAN" is a jailbreak persona, "Dan" is a name. Matched on the text
# as written; the triggers are still checked against lower-cased tokens.
CASED_RULES: dict[str, tuple[tuple[frozenset[str], ...], str]] = {
    "dan_persona": _rule("dan stan dude aim", r"\b(?:DAN|STAN|DUDE|AIM)\b"),
    "shouted_command": _rule(
        "ignore forget do stop just only",
        r"\b(?:IGNORE|FORGET|DO NOT|STOP|JUST|ONLY)\b[A-Z\W]{8,}",
    ),
}

# (name, remaining trigger sets, regex, cased), indexed by each word of the first trigger set:
# a text then only visits the rules one of its own words can start.
_Compiled = tuple[str, tuple[frozenset[str], ...], re.Pattern[str], bool]
_BY_TRIGGER: dict[str, list[_Compiled]] = {}
for _cased, _table in ((False, RULES), (True, CASED_RULES)):
    for _name, (_triggers, _pattern) in _table.items():
        _entry = (_name, _triggers[1:], re.compile(_pattern), _cased)
        for _word in _triggers[0]:
            _BY_TRIGGER.setdefault(_word, []).append(_entry)
# Every trigger word of every set: the words one lexicon pass over the text must report.
_TRIGGERS = Lexicon(
    {w for _, (sets, _) in (*RULES.items(), *CASED_RULES.items()) for s in sets for w in s}
)


def matched_rules(text: str, lowered: str) -> set[str]:
    """Names of the rules that match `text` (normalised; `lowered` is `text.lower()`)."""
    found = _TRIGGERS.found(lowered)
    rules: set[str] = set()
    for word in found.intersection(_BY_TRIGGER):
        for name, more, regex, cased in _BY_TRIGGER[word]:
            if (
                name not in rules
                and all(not t.isdisjoint(found) for t in more)
                and regex.search(text if cased else lowered)
            ):
                rules.add(name)
    return rules
