"""Regenerate the small example datasets in this folder (deterministic).

    python examples/data/make_data.py

They are tiny on purpose: enough for `tidetune run` to show a falling loss on the
builtin tiny model in a few minutes on a laptop CPU, not to teach a real model anything.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SYSTEM = "You are a careful calculator. Answer with the equation."


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}."


def write(name: str, rows: list[dict[str, object]]) -> None:
    with (HERE / name).open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(7)
    sft = []
    for i in range(400):
        question, answer = arithmetic(rng)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        if i % 10 == 0:  # a multi-turn sample whose first answer is not trained on
            q2, a2 = arithmetic(rng)
            messages[-1]["loss_weight"] = 0.0
            messages += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        sft.append({"messages": messages})
    write("arithmetic-sft.jsonl", sft)

    write(
        "arithmetic-pc.jsonl",
        [dict(zip(("question", "answer"), arithmetic(rng), strict=True)) for _ in range(300)],
    )

    preference = []
    for _ in range(200):
        question, answer = arithmetic(rng)
        wrong = answer.replace("=", "= about")
        preference.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {
                        "role": "assistant",
                        "content": [
                            {"text": answer, "score": 1.0},
                            {"text": wrong, "score": 0.2},
                            {"text": "I cannot say.", "score": 0.0},
                        ],
                    },
                ]
            }
        )
    write("arithmetic-preference.jsonl", preference)

    words = ["tide", "moon", "night", "shore", "wave", "salt", "wind", "harbour", "lamp", "star"]
    text = []
    for _ in range(150):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(8, 60)))
        text.append({"text": sentence.capitalize() + "."})
    write("tides-text.jsonl", text)


if __name__ == "__main__":
    main()
