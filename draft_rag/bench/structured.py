"""Structured documents for the faithfulness bench: a Markdown orders table (ids, customers, phone numbers,
amounts), Python signatures with defaults in a code block, a contacts list and prose notes full of numbers,
with one question whose answer is a single line of the document."""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = ("table", "code", "list", "prose")


@dataclass(frozen=True)
class StructuredDoc:
    """A document, a question about one of its lines, that line (the evidence) and the answer in it."""

    text: str
    question: str
    evidence: str
    answer: str
    kind: str


def _phone(rng: random.Random) -> str:
    return f"+1-{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"


def _orders(rng: random.Random, n: int) -> list[str]:
    ids = rng.sample(range(100000, 999999), n)
    return [
        f"| ORD-{i} | cust_{rng.choice('abcdef')}{rng.randint(1, 99)} | {_phone(rng)} | "
        f"{rng.randint(100, 9999)}.{rng.randint(10, 99)} |"
        for i in ids
    ]


def _signatures(rng: random.Random, n: int) -> list[str]:
    return [
        f"def handler_{i}(path, timeout={rng.randint(10, 300)}, retries={rng.randint(1, 9)}, "
        f"chunk_size={rng.choice([256, 512, 1024, 4096])}, encoding='{rng.choice(['utf-8', 'latin-1'])}'):\n"
        f'    """Fetch path, retrying on failure."""\n'
        f"    return fetch(path, timeout, retries)\n"
        for i in range(n)
    ]


def _contacts(rng: random.Random, n: int) -> list[str]:
    names = rng.sample([f"{a} {b}" for a in ("Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana")
                        for b in ("Ito", "Jones", "Kaur", "Lopez", "Moreau", "Nakai", "Okafor")], n)  # fmt: skip
    return [
        f"- {name}: {name.split()[0].lower()}.{rng.randint(10, 99)}@example.org, "
        f"https://example.org/u/{rng.randint(1000, 99999)}"
        for name in names
    ]


def _notes(rng: random.Random, n: int) -> list[str]:
    cities = ("Austin", "Bergen", "Cusco", "Dakar", "Esbjerg", "Fresno", "Galway", "Hilo", "Izmir", "Jaipur")
    return [
        f"The depot in {city} shipped {rng.randint(1000, 99999)} parcels in week {rng.randint(1, 52)}. "
        f"Its manager expects {rng.randint(10, 99)} new routes by {rng.randint(2027, 2031)}."
        for city in rng.sample(cities, n)
    ]


def structured_doc(seed: int, kind: str | None = None, rows: int = 60, functions: int = 30) -> StructuredDoc:
    """One document (~4-5k tokens with the defaults) and a question of ``kind`` (default: by ``seed``)."""
    rng = random.Random(seed)
    kind = kind or KINDS[seed % len(KINDS)]
    orders, code = _orders(rng, rows), _signatures(rng, functions)
    contacts, notes = _contacts(rng, 12), _notes(rng, 8)
    header = "| id | customer | phone | amount |\n|---|---|---|---|\n"
    text = (
        "# Operations handbook\n\n## Orders\n\n" + header + "\n".join(orders) + "\n\n## Client API\n\n```python\n"
        + "\n".join(code) + "```\n\n## Contacts\n\n" + "\n".join(contacts) + "\n\n## Notes\n\n"
        + " ".join(notes[:4]) + "\n\n" + " ".join(notes[4:]) + "\n"
    )  # fmt: skip
    pick = rng.randrange
    if kind == "table":
        line = orders[pick(len(orders))]
        order, phone = line.split(" | ")[0].strip("| "), line.split(" | ")[2]
        return StructuredDoc(text, f"What is the phone number of the customer of order {order}?", line, phone, kind)
    if kind == "code":
        line = code[pick(len(code))].splitlines()[0]
        name, timeout = line.split("(")[0][4:], line.split("timeout=")[1].split(",")[0]
        return StructuredDoc(text, f"What is the default timeout of {name}?", line, timeout, kind)
    if kind == "list":
        line = contacts[pick(len(contacts))]
        name, email = line[2:].split(":")[0], line.split(": ")[1].split(",")[0]
        return StructuredDoc(text, f"What is the e-mail address of {name}?", line, email, kind)
    note = notes[pick(len(notes))]
    sentence = note.split(". ")[0] + "."
    city, parcels = sentence.split(" in ")[1].split(" shipped")[0], sentence.split("shipped ")[1].split(" ")[0]
    return StructuredDoc(text, f"How many parcels did the depot in {city} ship?", sentence, parcels, kind)
