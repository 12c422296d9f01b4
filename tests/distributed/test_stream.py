"""Streaming record readers: order, sharding, resume, and errors that name the problem."""

import json

import pytest

from linalign.data import stream as st


@pytest.fixture
def corpus(tmp_path):
    """Three files (text, JSONL, text) of 7, 5 and 4 records; returns (paths, all records)."""
    a = [f"alpha {i} é" for i in range(7)]
    b = [f"beta {i}" for i in range(5)]
    c = ["", "gamma 1", "gamma 2", "gamma 3"]  # an empty line is a record too
    pa, pb, pc = tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.txt"
    pa.write_text("\n".join(a) + "\n", encoding="utf-8")
    pb.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(b)))
    pc.write_text("\r\n".join(c))  # CRLF and no final newline
    return [pa, pb, pc], a + b + c


def test_reads_all_records_in_order(corpus):
    paths, records = corpus
    assert list(st.RecordStream(paths)) == records


@pytest.mark.parametrize("procs", [2, 3, 5])
def test_process_shards_are_disjoint_strided_and_complete(corpus, procs):
    paths, records = corpus
    shards = [list(st.RecordStream(paths, process_index=p, process_count=procs)) for p in range(procs)]
    for p, shard in enumerate(shards):
        assert shard == records[p::procs]


@pytest.mark.parametrize("stop_after", [0, 1, 6, 7, 8, 12, 15])
@pytest.mark.parametrize("procs", [1, 2])
def test_resume_from_saved_position_continues_exactly(corpus, stop_after, procs):
    paths, records = corpus
    for p in range(procs):
        want = records[p::procs]
        first = st.RecordStream(paths, process_index=p, process_count=procs)
        got = []
        it = first.records()
        for _ in range(min(stop_after, len(want))):
            _, text = next(it)
            got.append(text)
        saved = st.StreamPosition.from_json(json.loads(json.dumps(first.position.to_json())))
        rest = list(st.RecordStream(paths, process_index=p, process_count=procs, start=saved))
        assert got + rest == want


def test_batches_and_resume_between_batches(corpus):
    paths, records = corpus
    stream = st.RecordStream(paths)
    batches = list(st.iter_batches(stream, 4))
    assert [t for _, b in batches for t in b] == records
    assert [len(b) for _, b in batches] == [4, 4, 4, 4]
    pos_after_two = batches[1][0]
    rest = [t for _, b in st.iter_batches(st.RecordStream(paths, start=pos_after_two), 4) for t in b]
    assert rest == records[8:]
    with pytest.raises(ValueError, match="batch_size"):
        next(st.iter_batches(stream, 0))


def test_errors_name_file_and_line(tmp_path, corpus):
    paths, _ = corpus
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(st.StreamError, match=r"bad.jsonl:2: not valid JSON"):
        list(st.RecordStream([bad]))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(st.StreamError, match=r"nofield.jsonl:1: .*lacks the text field 'text'"):
        list(st.RecordStream([nofield]))
    notstr = tmp_path / "notstr.jsonl"
    notstr.write_text('{"text": 3}\n')
    with pytest.raises(st.StreamError, match="is int, not a string"):
        list(st.RecordStream([notstr]))
    with pytest.raises(st.StreamError, match="does not exist"):
        st.RecordStream([tmp_path / "missing.txt"])
    with pytest.raises(st.StreamError, match="unknown format"):
        st.RecordStream(paths, "csv")
    with pytest.raises(TypeError, match="sequence of files"):
        st.RecordStream(str(paths[0]))


def test_position_that_no_longer_fits_the_file_is_refused(corpus):
    paths, _ = corpus
    with pytest.raises(st.StreamError, match="not at the start of a line"):
        list(st.RecordStream(paths, start=st.StreamPosition(0, 1, 3, 1)))
    with pytest.raises(st.StreamError, match="past the end"):
        list(st.RecordStream(paths, start=st.StreamPosition(0, 1, 10 ** 6, 1)))
    with pytest.raises(st.StreamError, match="lacks field"):
        st.StreamPosition.from_json({"file_index": 0})


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")  # optional: linalign does not depend on pyarrow
    import pyarrow.parquet as pq
    texts = [f"row {i}" for i in range(25)]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=7)
    assert list(st.RecordStream([path])) == texts
    s = st.RecordStream([path])
    it = s.records()
    for _ in range(10):
        next(it)
    assert list(st.RecordStream([path], start=s.position)) == texts[10:]


def test_parquet_without_pyarrow_says_so(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed here")
    except ImportError:
        pass
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(st.StreamError, match="needs pyarrow"):
        list(st.RecordStream([path]))
