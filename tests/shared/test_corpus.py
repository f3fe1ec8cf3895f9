"""The embedded personal data: a natural topic split with a floor on client size."""

import pytest

from stamen.shared.corpus import BASE_DOMAIN_TOPICS, load_topics, natural_split


def test_topics_load_as_prompt_response_pairs():
    topics = load_topics()
    assert {"ai", "food", "tech_support", "trivia"} <= set(topics)
    assert all(e.prompt and e.response for examples in topics.values() for e in examples)


def test_every_example_is_two_whole_turns_of_a_dialogue_in_its_topic_file():
    """Every turn comes whole from a dialogue of its source file: a string entry that is not a list of turns
    (trivia.yml has one) once became 53 one-character examples."""
    import yaml

    from stamen.shared.corpus import corpus_folder

    for topic, examples in load_topics().items():
        source = yaml.safe_load((corpus_folder() / f"{topic}.yml").read_text(encoding="utf-8"))["conversations"]
        turns = {str(turn).strip() for dialogue in source if isinstance(dialogue, list) for turn in dialogue}
        assert all(e.prompt in turns and e.response in turns for e in examples), topic
    assert not any(len(e.prompt) == 1 for e in load_topics()["trivia"])


def test_every_client_has_enough_data_and_disjoint_heldout():
    split = natural_split(8)
    assert len(split.clients) == 8
    names = [c.name for c in split.clients]
    assert len(set(names)) == 8
    for client in split.clients:
        assert len(client.train) + len(client.heldout) >= 40
        assert 1 <= len(client.heldout) <= 16
        assert not set(client.train) & set(client.heldout)
    assert not any(topic in name.split("+") for topic in BASE_DOMAIN_TOPICS for name in names)


def test_base_domain_comes_from_topics_no_client_has():
    split = natural_split(4)
    client_examples = {e for c in split.clients for e in (*c.train, *c.heldout)}
    assert split.base_domain and not set(split.base_domain) & client_examples


def test_split_is_deterministic_and_scales_past_the_topic_count():
    assert natural_split(4, seed=1) == natural_split.__wrapped__(4, seed=1)
    many = natural_split(100)
    assert len(many.clients) == 100
    assert any(c.name.startswith("spanish/") for c in many.clients)  # other languages add clients
    assert all(len(c.train) + len(c.heldout) >= 40 for c in many.clients)


def test_impossible_client_count_is_a_clear_error():
    from stamen.shared.user_errors import UserError

    with pytest.raises(UserError, match="at most 173 clients of >= 40 examples, not 5000: use fewer clients"):
        natural_split(5000)
