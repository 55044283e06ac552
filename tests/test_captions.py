"""Captions as users write them: the prompt forms and the training grammar."""

import numpy as np

from benchmarks.shape_world.captions import (
    PROMPT_FORMS,
    UNKNOWN_WORD_EXAMPLES,
    CaptionStyle,
    random_style,
    vocabulary_words,
    write_caption,
)
from benchmarks.shape_world.generator import split_scene


def test_the_sized_form_is_the_scenes_own_caption():
    for i in range(20):
        scene = split_scene("eval", i)
        assert write_caption(scene.objects, PROMPT_FORMS["sized"]).text == scene.caption


def test_forms_write_what_users_write():
    objects = split_scene("eval", 3, n_objects=3).objects
    a, b, c = (f"{o.colour} {o.shape}" for o in objects)
    assert write_caption(objects, PROMPT_FORMS["plain"]).text == f"a {a}, a {b} and a {c}"
    assert write_caption(objects, PROMPT_FORMS["bare"]).text == f"{a}, {b}, {c}"
    assert write_caption(objects, PROMPT_FORMS["picture_of"]).text == f"a picture of a {a}, a {b} with a {c}"
    mixed = write_caption(objects, PROMPT_FORMS["mixed"])
    assert mixed.phrases == (a, f"{objects[1].size} {b}", c)
    assert write_caption(objects[:1], CaptionStyle(sizes=(False,), article="a")).text.startswith(
        "an " if a[0] in "aeiou" else "a "
    )


def test_each_objects_phrase_is_in_its_caption_in_order():
    rng = np.random.default_rng(0)
    for i in range(200):
        scene = split_scene("train", i)
        written = write_caption(scene.objects, random_style(rng, len(scene.objects), ["zzyzx"]), rng)
        cursor = 0
        for phrase, obj in zip(written.phrases, scene.objects, strict=True):
            assert phrase.endswith(f"{obj.colour} {obj.shape}")
            found = written.text.find(phrase, cursor)
            assert found >= cursor, (phrase, written.text)
            cursor = found + len(phrase)


def test_the_grammar_varies_size_words_and_phrasing_and_stays_in_its_vocabulary():
    rng = np.random.default_rng(1)
    vocabulary = set(vocabulary_words())
    texts, sized_objects, objects = [], 0, 0
    for i in range(400):
        scene = split_scene("train", i)
        written = write_caption(scene.objects, random_style(rng, len(scene.objects)), rng)
        texts.append(written.text)
        objects += len(scene.objects)
        sized_objects += sum(len(p.split()) == 3 for p in written.phrases)
        words = written.text.replace(",", " , ").replace(".", " . ").replace(":", " : ").split()
        assert set(words) <= vocabulary, set(words) - vocabulary
    assert 0.5 < sized_objects / objects < 0.75  # a quarter of the template, then half the objects
    assert len(set(texts)) > 0.95 * len(texts)
    assert any(" with " in t for t in texts) and any(t.startswith(("a picture", "an image")) for t in texts)
    assert not vocabulary & set(UNKNOWN_WORD_EXAMPLES)  # the benchmark's unknown words stay unknown
