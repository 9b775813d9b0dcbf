"""What the benchmark sends: a ~1 KB support-ticket prompt with PII, and 1 KB / 32 KB texts.

Why fixed, generated text: the prompt must look like real traffic for a governance proxy (prose
with an e-mail address, a phone number, an SSN, a card number and an IP address in it) so the
PII and injection detectors do their real work, and it must be identical for every setup and
every run so ratios compare like with like. The detection texts are built from the same kind of
sentences, deterministically (a seeded generator), with about one entity per 250 characters.
"""

from __future__ import annotations

import json
import random
from typing import Any

SYSTEM = "You are a helpful support assistant for Northwind Telecom. Answer briefly."

PROMPT = (
    "Hi, I am writing about my account again because nobody answered my last message. My name "
    "is Dana Whitfield and my login e-mail is dana.whitfield@example.com. Last month I was "
    "charged twice for the same plan: once on the 3rd and again on the 5th. I called support "
    "at (415) 555-0134 and the agent said the second charge would be refunded within five "
    "business days, but it has now been two weeks. For verification they asked for my SSN, "
    "which is 536-22-8714, and the card the charges went to, 4111 1111 1111 1111, expiring "
    "09/27. I also noticed logins from an address I do not recognise, 203.0.113.77, on the "
    "same day as the second charge, so I changed my password. Could you please check whether "
    "the refund was issued, tell me the reference number, and confirm whether my account "
    "was accessed by someone else? I would also like to know if I can switch to the cheaper "
    "family plan without a new contract. Please reply by e-mail rather than phone, I am at "
    "work during the day and cannot take calls. Thank you for your help, Dana. Case aaaaaaa."
)

# The prompt's case tag: the "new prompt each request" rows (loadgen --vary) write a different
# seven letters here in every request, and the bench upstream copies them into its answer, so no
# request or answer text repeats and the verdict caches never hit. Letters only: never PII.
TAG_PREFIX = b"Case "
TAG_DEFAULT = b"aaaaaaa"


def tag(number: int) -> bytes:
    """The seven-letter tag for request `number` (26^7 values before it repeats)."""
    letters = bytearray(b"a" * 7)
    for position in range(6, -1, -1):
        number, digit = divmod(number, 26)
        letters[position] = 97 + digit
    return bytes(letters)


# The raw values the seed chain's pii-detector must not let reach the upstream.
PROMPT_SECRETS = ("dana.whitfield@example.com", "536-22-8714", "4111 1111 1111 1111")


def chat_body(stream: bool, model: str = "gpt-4o") -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": PROMPT},
        ],
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


_SENTENCES = (
    "Please update the shipping address on order {order} before it leaves the warehouse.",
    "You can reach me at {email} or on my mobile {phone} after six.",
    "The invoice total does not match the quote we agreed on last Tuesday.",
    "My social security number for the benefits form is {ssn}.",
    "The payment failed on card {card}, can you retry it tomorrow morning?",
    "Our office router at {ip} keeps dropping the VPN connection every hour.",
    "I would like to move the meeting to Thursday at half past two if that works.",
    "Transfer the deposit to IBAN {iban} and send the receipt to finance.",
    "The summary of the quarterly report is attached; the numbers are still preliminary.",
    "Could you explain why the delivery estimate changed from three days to nine?",
    "Ignore the earlier draft, the attached version has the corrected figures.",
    "We need the signed contract back by Friday so legal can file it.",
)
_CARDS = ("4111111111111111", "5500 0000 0000 0004", "3400-000000-00009", "4012888888881881")
_IBANS = ("DE89370400440532013000", "GB82WEST12345698765432", "FR1420041010050500013M02606")


def text_of_size(size: int, seed: int = 7) -> str:
    """Deterministic prose of exactly `size` characters (ASCII) with PII sprinkled in."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        template = rng.choice(_SENTENCES)
        sentence = template.format(
            order=f"{rng.randint(10000, 99999)}",
            email=f"user{rng.randint(1, 999)}@example.{rng.choice(['com', 'org', 'net'])}",
            phone=f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}",
            ssn=f"{rng.randint(101, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
            card=rng.choice(_CARDS),
            ip=f"198.51.100.{rng.randint(1, 254)}",
            iban=rng.choice(_IBANS),
        )
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:size]
