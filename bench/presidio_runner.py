"""Time presidio-analyzer's pattern recognizers; runs inside the presidio virtualenv only.

Why a separate script: presidio-analyzer (and spaCy beneath it) lives in its own virtualenv so it
never touches packgate's dependencies; this file imports nothing from packgate. The analyzer is
built without an NLP model: a stub NlpEngine returns empty NlpArtifacts (no tokens, no
entities), and the registry holds only the pattern/checksum recognizers for the six entity
types packgate's detector covers. That is presidio at its fastest; the full default setup
(spaCy en_core_web_lg plus every recognizer) is slower still.

    <presidio venv>/bin/python bench/presidio_runner.py TEXTS.json SECONDS BATCHES
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry  # type: ignore[import-not-found]
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine  # type: ignore[import-not-found]
from presidio_analyzer.predefined_recognizers import (  # type: ignore[import-not-found]
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)

ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"]


class NoNlpEngine(NlpEngine):  # type: ignore[misc]
    """An NLP engine that does nothing, so no spaCy model is needed."""

    def load(self) -> None:
        return None

    def is_loaded(self) -> bool:
        return True

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        return NlpArtifacts(
            entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=self, language=language
        )

    def process_batch(self, texts: Any, language: str, **_kwargs: Any) -> Any:
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return False

    def is_punct(self, word: str, language: str) -> bool:
        return False

    def get_supported_entities(self) -> list[str]:
        return []

    def get_supported_languages(self) -> list[str]:
        return ["en"]


def main() -> None:
    texts: dict[str, str] = json.loads(open(sys.argv[1]).read())  # noqa: SIM115
    seconds, batches = float(sys.argv[2]), int(sys.argv[3])
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        EmailRecognizer(),
        PhoneRecognizer(),
        UsSsnRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
    ):
        registry.add_recognizer(recognizer)
    engine = AnalyzerEngine(registry=registry, nlp_engine=NoNlpEngine(), supported_languages=["en"])
    out: dict[str, Any] = {}
    for label, text in texts.items():
        found = engine.analyze(text=text, language="en", entities=ENTITIES)
        size = len(text.encode())
        rates = []
        for _ in range(batches):
            count, started = 0, time.perf_counter()
            while True:
                engine.analyze(text=text, language="en", entities=ENTITIES)
                count += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds and count >= 3:
                    break
            rates.append(size * count / elapsed / 1e6)
        out[label] = {"mb_s": statistics.median(rates), "findings": len(found)}
    setup = (
        "AnalyzerEngine with a stub NlpEngine (no spaCy model) and only the Email, Phone, "
        "UsSsn, CreditCard, Iban and Ip recognizers"
    )
    print(json.dumps({"sizes": out, "setup": setup}))


if __name__ == "__main__":
    main()
