"""The phrase rules of the prompt-injection model: hand-written patterns, one binary feature each.

Why this exists: a few phrasings ("ignore all previous instructions", "vergiss alle bisherigen
Anweisungen", "you are now DAN") are the backbone of most attacks and are easier to state than to
learn from a few thousand examples; each rule is one feature whose weight the model learns (a
rule that also fires on benign text simply earns a small weight). Rules run on the normalised
text (lower-cased, except `CASED_RULES`), and only when the text contains their trigger words:
the compiled core's `Lexicon` finds those words in one pass, so a benign prompt usually runs no
regex at all. The same pass gives the offsets of each rule's possible first words, and the regex
is tried only there (`re.match` at an offset costs the length of a phrase; `re.search` scans the
whole text once per rule, which cost ~100 us per KB on prompts full of common trigger words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .ngram import Lexicon

__all__ = ["CASED_RULES", "RULES", "Rule", "matched_rules", "searched_rules"]

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


@dataclass(frozen=True)
class Rule:
    """One phrase rule: its regex and the words that let the matcher skip or anchor it.

    `triggers`: sets of words; a match contains a word of every set as a token, so a text
    lacking one runs no regex. `starts`: lexicon entries (a word, or "prefix*" for every token
    starting with it) one of which is the first token of every match, so the regex is tried
    only where such a token starts (`re.match` at that offset) instead of scanning the text.
    Both are shortcuts that never change what matches (tests/unit/sidecar/test_injection.py
    checks the patterns' leading words and compares with a plain search on real prompts).
    """

    triggers: tuple[frozenset[str], ...]
    pattern: str
    starts: frozenset[str]


def _rule(triggers: str, pattern: str, starts: str | None = None) -> Rule:
    """A rule; "a b | c d" means (a or b) and (c or d) must be tokens; `starts` defaults to the
    first trigger set (the rule's leading words)."""
    sets = tuple(frozenset(part.split()) for part in triggers.split("|"))
    return Rule(sets, pattern, frozenset(starts.split()) if starts else sets[0])


# Phrase rules, matched on lower-cased normalised text. Each is one binary feature whose weight
# the model learns, so a rule that also fires on benign text simply earns a small weight.
RULES: dict[str, Rule] = {
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
        starts="you from stay",
    ),
    "jailbreak_names": _rule(
        "anything developer jailbroken evil override",
        (
            rf"\b(?:do{_W}anything{_W}now|developer{_W}mode{_W}(?:enabled|output)|jailbroken"
            rf"|evil{_W}(?:bot|ai|confidant)|(?:admin|sudo|root|debug|maintenance){_W}override)\b"
        ),
        starts="do developer jailbroken evil admin sudo root debug maintenance",
    ),
    "no_limits": _rule(
        "restriction restrictions limitation limitations limits filter filters filtering "
        "censorship rules guidelines boundaries ethics moral morals policies",
        (
            rf"\b(?:no|without|free{_W}(?:of|from)|beyond|not{_W}bound{_W}by|remove\w*)"
            rf"{_W}(?:any{_W})?(?:restrictions?|limitations?|limits|filters?|filtering|censorship"
            rf"|rules|guidelines|boundaries|ethics|morals?|policies)\b"
        ),
        starts="no without free beyond not remove*",
    ),
    "policy": _rule(
        "policy policies",
        rf"\b(?:openai|content|usage){_W}polic(?:y|ies)\b",
        starts="openai content usage",
    ),
    "never_refuse": _rule(
        "refuse decline warning warnings disclaimer disclaimers",
        (
            rf"\b(?:never|not|don\W?t|cannot|can\W?t|won\W?t){_W}(?:\w+\W+)?(?:refuse|decline)\b"
            rf"|\bwithout{_W}(?:any{_W})?(?:warnings?|disclaimers?)\b"
        ),
        starts="never not don dont cannot can cant won wont without",
    ),
    "system_prompt": _rule(
        "system initial original hidden secret full | prompt message instruction instructions",
        (
            rf"\bsystem{_W}(?:prompt|message|instructions?)\b"
            rf"|\b(?:initial|original|hidden|secret|full){_W}(?:prompt|instructions)\b"
        ),
        starts="system initial original hidden secret full",
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
        starts="what text words sentence sentences",
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
        starts="well good great excellent very that simply fantastic congratulations",
    ),
    "tasks_follow": _rule(
        "follow followed",
        rf"\b(?:now|further|new){_W}(?:\w+\W+)?(?:tasks?|instructions?)"
        rf"{_W}(?:follow|are{_W}followed)\b",
        starts="now further new",
    ),
    # Steering the answer away from the retrieved context (RAG injection).
    "context_override": _rule(
        "article articles document documents context source sources told",
        (
            rf"\b(?:not|instead{_W}of|rather{_W}than|disregarding|regardless{_W}of|despite"
            rf"|without{_W}looking{_W}at){_W}(?:\w+\W+){{0,3}}?(?:articles?|documents?|context"
            rf"|sources?|what{_W}you\W*ve{_W}been{_W}told)\b"
        ),
        starts="not instead rather disregarding regardless despite without",
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
        starts="gut sehr ausgezeichnete super das herzlichen nun jetzt",
    ),
    "de_ignore_target": _rule(
        "anweisungen instruktionen befehle aufgaben aufträge regeln vorgaben informationen "
        "angaben alles anleitungen richtlinien dokumente artikel",
        (
            rf"\b(?:vergiss|vergessen{_W}sie|ignorier\w*|missacht\w*|verwirf|vernachlässig\w*)"
            rf"{_W}{_SKIP}{_TARGET_DE}\b"
        ),
        starts="vergiss vergessen ignorier* missacht* verwirf vernachlässig*",
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
        starts="du ab jetzt nun stell tu spiele als fungieren",
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
        starts="olvid* ignor* oubli* zaboravi забудь* игнорир*",
    ),
}
# Case matters for these: "DAN" is a jailbreak persona, "Dan" is a name. Matched on the text
# as written; the triggers are still checked against lower-cased tokens.
CASED_RULES: dict[str, Rule] = {
    "dan_persona": _rule("dan stan dude aim", r"\b(?:DAN|STAN|DUDE|AIM)\b"),
    "shouted_command": _rule(
        "ignore forget do stop just only",
        r"\b(?:IGNORE|FORGET|DO NOT|STOP|JUST|ONLY)\b[A-Z\W]{8,}",
    ),
}


@dataclass(frozen=True)
class _Compiled:
    name: str
    more: tuple[frozenset[str], ...]  # the trigger sets after the first
    regex: re.Pattern[str]
    cased: bool
    starts: frozenset[str]


# Indexed by each word of the first trigger set: a text only visits the rules one of its own
# words can trigger.
_BY_TRIGGER: dict[str, list[_Compiled]] = {}
for _cased, _table in ((False, RULES), (True, CASED_RULES)):
    for _name, _r in _table.items():
        _entry = _Compiled(_name, _r.triggers[1:], re.compile(_r.pattern), _cased, _r.starts)
        for _word in _r.triggers[0]:
            _BY_TRIGGER.setdefault(_word, []).append(_entry)
_TRIGGER_WORDS = frozenset(_BY_TRIGGER)
# Every trigger word and start entry: one lexicon pass over the text reports them all.
_LEXICON = Lexicon(
    {
        w
        for r in (*RULES.values(), *CASED_RULES.values())
        for s in (*r.triggers, r.starts)
        for w in s
    }
)


def matched_rules(text: str, lowered: str) -> set[str]:
    """Names of the rules that match `text` (normalised; `lowered` is `text.lower()`)."""
    where = _LEXICON.where(lowered)
    rules: set[str] = set()
    if not where:
        return rules
    # Offsets in `lowered` are offsets in `text` when lower-casing kept every character's length
    # (it does except for a few letters such as "İ"); otherwise cased rules search the text.
    aligned = len(text) == len(lowered)
    # A rule is tried once, however many of its trigger words the text holds. Plain loops
    # rather than generator expressions: this runs on every request.
    tried: set[str] = set()
    for word in _TRIGGER_WORDS.intersection(where):
        for rule in _BY_TRIGGER[word]:
            name = rule.name
            if name in tried:
                continue
            tried.add(name)
            missing = False
            for words in rule.more:  # each further trigger set needs a word in the text
                if words.isdisjoint(where):
                    missing = True
                    break
            if missing:
                continue
            if rule.cased:
                if not aligned:
                    if rule.regex.search(text):
                        rules.add(name)
                    continue
                subject = text
            else:
                subject = lowered
            # The rule matches when its regex matches at an offset of one of its start words
            # (the inner loop breaks on a match; the outer one then records it and stops).
            match = rule.regex.match
            for start in rule.starts.intersection(where):
                for at in where[start]:
                    if match(subject, at):
                        break
                else:
                    continue
                rules.add(name)
                break
    return rules


_SEARCHED = [
    (name, re.compile(rule.pattern), cased)
    for cased, table in ((False, RULES), (True, CASED_RULES))
    for name, rule in table.items()
]


def searched_rules(text: str, lowered: str) -> set[str]:
    """`matched_rules` by definition: every regex searched over the whole text, no shortcuts
    (the reference scorer's path, and what the tests compare the fast one with)."""
    return {n for n, regex, cased in _SEARCHED if regex.search(text if cased else lowered)}
