"""Tokens in one chunk at the cap (MAX_CHUNK_CHARS characters) for token-hungry kinds of text, with the
bundled model's tokenizer: why the cap keeps a chunk inside the 8,192-token window.

    python benchmarks/chunk_tokens.py
"""

from __future__ import annotations

import base64
import random

from at2_rag import load_model
from at2_rag.app.corpus import MAX_CHUNK_CHARS


def main() -> None:
    _, tok = load_model()
    rng = random.Random(0)
    texts = {
        "English prose": "The glacier route is long and cold, and the climbers rest at the hut before the summit. ",
        "base64": base64.b64encode(bytes(rng.randrange(256) for _ in range(3 * MAX_CHUNK_CHARS))).decode(),
        "Chinese": "乞力马扎罗山是非洲最高的山，位于坦桑尼亚。",
        "emoji": "🏔️⛰️🗻🌋",
    }
    print(f"{'text':<14} {'characters':>10} {'tokens':>7}")
    for name, unit in texts.items():
        chunk = (unit * (MAX_CHUNK_CHARS // len(unit) + 1))[:MAX_CHUNK_CHARS]
        print(f"{name:<14} {len(chunk):>10} {len(tok(chunk, add_special_tokens=False)['input_ids']):>7}")


if __name__ == "__main__":
    main()
