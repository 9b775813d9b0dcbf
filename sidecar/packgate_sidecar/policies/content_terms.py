"""The built-in term lists of the content-filter policy, one entry per category.

Why it exists: a content filter that blocks single common words ("kill", "shoot", "drugs") would
stop "kill the process", "shoot me an e-mail" and a pharmacology question, so people would turn
it off. These lists are deliberately narrow instead: phrases and patterns that state harmful
intent or ask for operational help with harm ("how to make a bomb", "ways to kill myself",
"cook meth"), not topics. They catch the blatant cases cheaply and predictably; they are not a
classifier, and a platform team adds its own `terms` and `patterns` for its domain.

Format: `terms` are literal phrases, matched case-insensitively on word edges with any run of
whitespace between words; `patterns` are Python regular expressions, compiled case-insensitively,
written with their own word boundaries. Both are matched on normalised text (NFKC, invisible
characters removed, look-alike letters folded), so "h\u200bow to make a b\u043emb" is caught too.
Keep every entry short (well under the stream hold-back of 160 characters).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


_HOW = r"(?:how (?:do i|do you|can i|could i|would i|to|should i)|ways? to|best way to|steps to)"
_PEOPLE = (
    r"(?:someone|somebody|a person|people|my (?:wife|husband|partner|boss|neighbou?r|mother|"
    r"father|mom|dad|parents|sister|brother|teacher|coworker|colleague|ex))"
)
_GROUPS = (
    r"(?:jews|muslims|christians|hindus|sikhs|blacks|whites|asians|arabs|mexicans|immigrants|"
    r"refugees|gays|lesbians|trans people|women|disabled people)"
)
_DRUGS = (
    r"(?:meth|methamphetamine|crystal meth|crack|crack cocaine|cocaine|heroin|fentanyl|lsd|mdma|"
    r"ecstasy|ghb|pcp|dmt)"
)

CATEGORIES: dict[str, Category] = {
    "violence": Category(
        terms=(
            "hire a hitman",
            "hire a hit man",
            "plan a mass shooting",
            "commit a mass shooting",
        ),
        patterns=(
            rf"\b{_HOW} (?:kill|murder|strangle|poison|stab|shoot|torture) {_PEOPLE}\b",
            r"\bi(?: am|'m) going to (?:kill|murder|stab|shoot) (?:you|him|her|them|everyone)\b",
            r"\bi (?:will|want to) (?:kill|murder|stab|shoot) (?:you|him|her|them|everyone)\b",
            r"\bbeat (?:him|her|them|someone|somebody) to death\b",
            r"\b(?:dispose of|get rid of|hide) (?:a|the) (?:dead body|corpse)\b",
            rf"\b{_HOW} (?:kidnap|abduct) (?:a child|someone|somebody)\b",
        ),
    ),
    "self-harm": Category(
        terms=(
            "kill myself",
            "killing myself",
            "end my life",
            "ending my life",
            "hang myself",
            "suicide methods",
            "painless way to die",
            "painless suicide",
        ),
        patterns=(
            rf"\b{_HOW} (?:commit suicide|cut myself|overdose|starve myself)\b",
            r"\bhow many (?:pills|tablets|sleeping pills) (?:to|would|will) (?:kill|overdose)\b",
            r"\bi (?:want|plan|am going) to (?:die|hurt myself|harm myself)\b",
        ),
    ),
    "hate": Category(
        terms=(
            "gas the jews",
            "racial holy war",
            "race war now",
        ),
        patterns=(
            rf"\b(?:kill|exterminate|eradicate|gas) all (?:the )?{_GROUPS}\b",
            rf"\b{_GROUPS} (?:are|r) (?:subhuman|vermin|parasites|animals|inferior|a disease)\b",
            rf"\b{_GROUPS} (?:should|must|deserve to) (?:die|be exterminated|be killed)\b",
        ),
    ),
    "sexual": Category(
        terms=(
            "sex with a minor",
            "sex with a child",
            "sex with children",
            "send nudes",
        ),
        patterns=(
            r"\b(?:nude|naked|explicit) (?:photos?|pictures?|images?|videos?) of "
            r"(?:a )?(?:child|children|minor|minors|kid|kids|underage)\b",
            r"\b(?:find|get|download|buy|watch|share|send|trade) (?:some )?"
            r"child (?:porn|pornography|sexual abuse material)\b",
            r"\bwrite (?:an? |me an? )?(?:explicit|erotic|pornographic|porn|nsfw|smutty) "
            r"(?:story|scene|fanfic|fan fiction|roleplay)\b",
            r"\b(?:sexual|erotic) (?:content|story|roleplay) (?:with|about|involving) "
            r"(?:a )?(?:minor|minors|child|children|kid|kids)\b",
        ),
    ),
    "weapons": Category(
        terms=("weaponize anthrax",),
        patterns=(
            rf"\b{_HOW} (?:make|build|assemble|construct) (?:a |an )?(?:bomb|explosive|explosive "
            r"device|ied|grenade|detonator|suicide vest|car bomb|pipe bomb|nail bomb|dirty bomb|"
            r"molotov cocktail)\b(?![- ](?:proof|shelter|squad|disposal|detector|threat|drill)\b)",
            rf"\b{_HOW} (?:make|build|3d print) (?:a |an )?(?:gun|firearm|silencer|suppressor|"
            r"ghost gun|auto sear|untraceable (?:gun|firearm))\b(?![- ](?:safe|cabinet|license)\b)",
            r"\b(?:make|synthesi[sz]e|produce|weaponi[sz]e) (?:sarin|vx|ricin|mustard gas|"
            r"nerve agents?|anthrax|napalm|tatp)\b",
            r"\bconvert (?:an? |my )?(?:ar-?15|rifle|glock|pistol|semi-?auto(?:matic)?) "
            r"(?:to|into) (?:full[- ]?auto|fully automatic|automatic)\b",
        ),
    ),
    "illegal-drugs": Category(
        terms=(
            "cook meth",
            "cooking meth",
            "meth recipe",
        ),
        patterns=(
            rf"\b{_HOW} (?:make|cook|synthesi[sz]e|manufacture|produce|extract) {_DRUGS}\b",
            rf"\b(?:where (?:can i|to|do i)|how (?:can i|do i|to)) (?:buy|get|order|score) "
            rf"{_DRUGS}\b",
            rf"\bbuy {_DRUGS} online\b",
            rf"\b{_HOW} (?:smuggle|traffic|sell) (?:drugs|{_DRUGS})\b",
        ),
    ),
}
