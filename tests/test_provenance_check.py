from provenance import splits_into_prefixes


def test_splits_need_every_piece_to_be_a_prefix_in_order():
    # The CI case: a greedy reading runs " first" on into the next span and loses its place.
    spans = ["\nThis is", " first n number", " first n odd", " first n odd.", "\nQuestion: Q\n\nAnswer"]
    assert splits_into_prefixes("\n first first first\nQuestion: Q\n\nAnswer", spans)
    assert splits_into_prefixes("", spans)
    assert not splits_into_prefixes("abX", ["ab", "c"])  # X was never sampled
    assert not splits_into_prefixes("ba", ["ab"])  # not a prefix
    assert not splits_into_prefixes("cab", ["ab", "c"])  # out of order
