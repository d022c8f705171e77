"""The main job: answer questions over a small document set and show which sources drove each answer."""

from __future__ import annotations

import time

DEMO_DOCUMENTS = [
    {"id": "everest", "title": "Mount Everest",
     "text": "Mount Everest is Earth's highest mountain above sea level, at 8,849 metres. It lies in the "
             "Mahalangur Himal sub-range of the Himalayas, on the border between Nepal and China."},
    {"id": "k2", "title": "K2",
     "text": "K2 is the second-highest mountain on Earth, at 8,611 metres. It lies in the Karakoram range "
             "on the border between Pakistan and China."},
    {"id": "kilimanjaro", "title": "Mount Kilimanjaro",
     "text": "Mount Kilimanjaro is a dormant volcano in Tanzania. At 5,895 metres it is the highest "
             "mountain in Africa."},
    {"id": "denali", "title": "Denali",
     "text": "Denali, in Alaska, is the highest mountain peak in North America, with a summit elevation "
             "of 6,190 metres above sea level."},
    {"id": "hillary", "title": "First ascent of Everest",
     "text": "Edmund Hillary and Tenzing Norgay made the first confirmed ascent of Mount Everest on "
             "29 May 1953, as members of a British expedition led by John Hunt."},
]

DEMO_QUESTIONS = [
    "Who first climbed Mount Everest?",
    "What is the highest mountain in Africa?",
]


def run_demo(model: str = "default", estimator: str | None = "default", device=None, dtype=None) -> None:
    """Load the model, answer each demo question, print ranked sources and per-sentence citations."""
    from .attributor import AT2Attributor

    t0 = time.perf_counter()
    print(f"Loading {model} model ...", flush=True)
    att = AT2Attributor.from_pretrained(model, estimator, device=device, dtype=dtype)
    print(f"  ready in {time.perf_counter() - t0:.1f} s; estimator: "
          f"{'uniform (average attention)' if att.estimator.is_uniform else att.estimator.recipe.get('method')}\n")
    for question in DEMO_QUESTIONS:
        t1 = time.perf_counter()
        result = att.generate(question, DEMO_DOCUMENTS, max_new_tokens=48)
        print(f"Q: {question}")
        print(f"A: {result.answer.strip()}   ({time.perf_counter() - t1:.1f} s, "
              f"{result.extra_forward_passes} extra forward passes)")
        print(result.table(width=70))
        for sent in result.sentences:
            best = result.top_k(1, sentence=result.sentences.index(sent))[0]
            title = result.prompt.documents[best.source.document].title
            print(f'  "{sent.text.strip()}"  <- [{best.source.document + 1}] {title} ({best.score:.3f})')
        print()
