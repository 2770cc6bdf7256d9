"""One seed stream per sample (tessy/engine/seeds.py)."""

import pytest

from tessy.engine.seeds import SEED_BITS, request_seed, stream_seed, uniform


def test_a_stream_is_named_by_its_key_and_its_base():
    keys = ["p1/student", "p2/student", "p1/teacher", "p1/student/candidate0", "p1/student/candidate1"]
    streams = [stream_seed(0, k) for k in keys]
    assert len(set(streams)) == len(keys)
    assert stream_seed(0, "p1/student") == streams[0]  # stable: a resumed run samples the same
    assert stream_seed(1, "p1/student") != streams[0]


def test_requests_differ_by_position_and_repeat_at_the_same_one():
    s = stream_seed(0, "p1/student")
    assert request_seed(s, 10) == request_seed(s, 10) != request_seed(s, 11)
    assert all(0 <= request_seed(s, i) < 2**SEED_BITS for i in range(100))


def test_no_base_seed_means_unseeded():
    assert stream_seed(None, "p1/student") is None and request_seed(None, 5) is None


@pytest.mark.parametrize("position", [0, 1, 1000])
def test_uniform_is_in_the_unit_interval(position):
    u = uniform(stream_seed(0, "k"), position)
    assert 0.0 <= u < 1.0 and u == uniform(stream_seed(0, "k"), position)
