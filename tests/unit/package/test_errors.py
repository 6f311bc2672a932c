"""Bad input gets a typed, explanatory error, and a rejected call changes nothing."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest


@pytest.fixture
def writer(store_path):
    w = ab.StoreWriter(store_path, sites={"source": 4, "target": 3}, shard_rows=5)
    w.append(source=np.zeros((2, 4)), target=np.zeros((2, 3)), doc=[0, 0])
    yield w
    w.close()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"source": np.zeros((2, 4)), "doc": [0, 0]}, "missing"),
        (
            {
                "source": np.zeros((2, 4)),
                "target": np.zeros((2, 3)),
                "other": np.zeros((2, 3)),
                "doc": [0, 0],
            },
            "other",
        ),
        ({"source": np.zeros((2, 5)), "target": np.zeros((2, 3)), "doc": [0, 0]}, "width 5"),
        ({"source": np.zeros((2, 4)), "target": np.zeros((3, 3)), "doc": [0, 0]}, "row counts"),
        ({"source": np.zeros(4), "target": np.zeros((1, 3)), "doc": [0]}, "2-D"),
        ({"source": np.zeros((1, 2, 4)), "target": np.zeros((1, 3)), "doc": [0]}, "2-D"),
        ({"source": np.zeros((2, 4), np.int32), "target": np.zeros((2, 3)), "doc": [0, 0]}, "int32"),
        ({"source": np.zeros((2, 4)), "target": np.zeros((2, 3)), "doc": [0, 0, 0]}, "3 values for 2 rows"),
        ({"source": np.zeros((2, 4)), "target": np.zeros((2, 3)), "doc": [0.5, 1.0]}, "integers"),
        ({"source": np.zeros((2, 4)), "target": np.zeros((2, 3))}, "columns"),
        ({"source": np.zeros((2, 4)), "target": np.zeros((2, 3)), "doc": [0, 0], "pos": [0, 1]}, "columns"),
    ],
)
def test_bad_appends_raise_store_error_and_append_nothing(writer, kwargs, needle):
    with pytest.raises(ab.StoreError, match=needle):
        writer.append(**kwargs)
    assert writer.rows == 2


def test_check_finite(store_path):
    x = np.zeros((3, 2), np.float32)
    x[1, 1] = np.inf
    with ab.StoreWriter(store_path, sites={"x": 2}, check_finite=True) as w:
        with pytest.raises(ab.StoreError, match="row 1, column 1"):
            w.append(x=x)
        w.append(x=x, check_finite=False)  # per-call override
        assert w.rows == 3


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sites": {}}, "non-empty"),
        ({"sites": {"a": 0}}, "width"),
        ({"sites": {"a": -3}}, "width"),
        ({"sites": {"a": 2.5}}, "width"),
        ({"sites": {"a/b": 4}}, "invalid site name"),
        ({"sites": {"a": 4}, "dtype": "int8"}, "unsupported dtype"),
        ({"sites": {"a": 4}, "dtype": {"b": "float32"}}, "unknown sites"),
        ({"sites": {"a": 4}, "mode": "w"}, "mode"),
        ({"sites": {"a": 4}, "shard_rows": 0}, "shard_rows"),
        ({"sites": {"a": 4}, "metadata": {"x": object()}}, "JSON"),
        ({"sites": {"a": 4}, "columns": ["a"]}, "twice"),
    ],
)
def test_bad_writer_arguments(store_path, kwargs, needle):
    with pytest.raises(ab.StoreError, match=needle):
        ab.StoreWriter(store_path, **kwargs)


def test_existing_path_with_mode_x(store_path):
    with ab.StoreWriter(store_path, sites={"a": 2}) as w:
        w.append(a=np.ones((1, 2)))
    with pytest.raises(ab.StoreError, match="already exists") as caught:
        ab.StoreWriter(store_path, sites={"a": 2})
    assert isinstance(caught.value, FileExistsError) and type(caught.value) is ab.StoreExistsError
    # A non-store directory is refused in "a" mode too, and nothing in it is touched.
    other = store_path.parent / "notastore"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ab.StoreError, match="not a store"):
        ab.StoreWriter(other, sites={"a": 2}, mode="a")
    assert (other / "keep.txt").read_text() == "x"


def test_resume_with_other_sites_is_refused(store_path):
    with ab.StoreWriter(store_path, sites={"a": 2}, dtype="float16") as w:
        w.append(a=np.ones((1, 2)))
    for sites, dtype in [({"a": 3}, "float16"), ({"a": 2}, "bfloat16"), ({"a": 2, "b": 1}, "float16")]:
        with pytest.raises(ab.StoreError, match="do not match"):
            ab.StoreWriter(store_path, sites=sites, dtype=dtype, mode="a")


def test_second_writer_is_refused_until_the_first_closes(store_path):
    w = ab.StoreWriter(store_path, sites={"a": 2})
    with pytest.raises(ab.StoreError, match="another StoreWriter"):
        ab.StoreWriter(store_path, sites={"a": 2}, mode="a")
    w.close()
    ab.StoreWriter(store_path, sites={"a": 2}, mode="a").close()


def test_closed_writer_refuses_appends(store_path):
    w = ab.StoreWriter(store_path, sites={"a": 2})
    w.close()
    assert w.close() == 0  # idempotent
    with pytest.raises(ab.StoreError, match="closed"):
        w.append(a=np.ones((1, 2)))


def test_reader_errors(store_path):
    with pytest.raises(ab.StoreError, match="no store") as caught:
        ab.ActivationStore(store_path)
    assert isinstance(caught.value, FileNotFoundError) and type(caught.value) is ab.StoreNotFoundError
    with pytest.raises(FileNotFoundError):
        ab.ActivationStore(store_path / "deeper" / "still")
    with ab.StoreWriter(store_path, sites={"a": 2}, shard_rows=4) as w:
        w.append(a=np.ones((10, 2)), doc=np.arange(10))
    s = ab.ActivationStore(store_path)
    for call, needle in [
        (lambda: s.read("b"), "unknown site"),
        (lambda: s.read("doc"), "it is a column"),
        (lambda: s.column("a"), "unknown column"),
        (lambda: s.read("a", 10), "out of range"),
        (lambda: s.read("a", [-11]), "out of range"),
        (lambda: s.read("a", np.array([0.5])), "integer"),
        (lambda: s.read("a", np.ones(3, bool)), "mask"),
        (lambda: s.read("a", dtype="int8"), "dtype"),
        (lambda: s.read("a", dtype="bfloat16"), "read_torch"),
        (lambda: s.batches("a", batch_size=0), "batch_size"),
        (lambda: s.batches("zz"), "unknown site or column"),
        (lambda: s.batches("a", shuffle="sometimes"), "shuffle"),
        (lambda: s.split(1.5), "fraction"),
        (lambda: s.stats("a", rows=[]), "zero rows"),
    ]:
        with pytest.raises(ab.StoreError, match=needle) as caught:
            call()
        # every one is a bad argument, so it is also a ValueError (and not a corrupt store)
        assert isinstance(caught.value, ValueError), (needle, type(caught.value))
        assert not isinstance(caught.value, ab.StoreCorruptError)


def test_errors_form_one_hierarchy():
    assert issubclass(ab.StoreCorruptError, ab.StoreError)
    assert issubclass(ab.StoreError, ab.ActbridgeError)
    assert issubclass(ab.ActbridgeError, Exception)
    kinds = {
        ab.StoreArgumentError: (ab.StoreError, ValueError),
        ab.StoreNotFoundError: (ab.StoreError, FileNotFoundError),
        ab.StoreExistsError: (ab.StoreError, FileExistsError),
        ab.MapArgumentError: (ab.MapError, ValueError),
        ab.MapCorruptError: (ab.MapError,),
        ab.InterventionError: (ab.ActbridgeError, ValueError),
        ab.VectorCorruptError: (ab.InterventionError,),
        ab.EvaluateError: (ab.ActbridgeError, ValueError),
        ab.LoraTargetError: (ab.FinetuneError, ValueError),
        ab.OutputExistsError: (ab.FinetuneError, FileExistsError),
        ab.TaskError: (ab.ActbridgeError, ValueError),
        ab.RefusalSplitError: (ab.TaskError,),
        ab.UnknownBackdoorError: (ab.TaskError, KeyError),
    }
    for cls, bases in kinds.items():
        assert all(issubclass(cls, b) for b in bases), cls
    assert ab.SteerError is ab.InterventionError  # the old name stays


def test_every_exception_and_warning_lives_in_the_errors_module():
    """One place to import from: every exception or warning class the package defines is in
    ``actbridge.errors`` (and re-exported at the top level under the same name)."""
    import importlib
    import inspect
    import pkgutil

    import actbridge.errors as errors

    assert set(errors.__all__) == {
        n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, (Exception, Warning))
    }
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert getattr(ab, name) is cls and getattr(ab.errors, name) is cls
        assert cls.__module__ == "actbridge.errors", (name, cls.__module__)
        assert cls.__doc__ and cls.__doc__.strip(), name
    for info in pkgutil.walk_packages(ab.__path__, "actbridge."):
        if info.name == "actbridge.errors" or info.name.endswith(("_native", "__main__", ".demo")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, (Exception, Warning)) and obj.__module__ == info.name:
                assert name.startswith("_"), f"{info.name}.{name} should live in actbridge.errors"


def test_library_code_raises_no_bare_builtin_errors():
    """Bad input raises an actbridge class (which may also be a ValueError), never a bare
    ``ValueError`` / ``TypeError`` / ``SystemExit``: callers can always catch by origin. The CLI
    (an application) is the one place that exits."""
    import ast
    from pathlib import Path

    root = Path(ab.__file__).parent
    bare = {"ValueError", "TypeError", "KeyError", "RuntimeError", "SystemExit", "Exception"}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "cli":  # the command line exits with its messages
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id in bare:
                    found.append(f"{path.relative_to(root)}:{node.lineno} raises {exc.id}")
    assert not found, found


def test_interventions_raise_intervention_error_for_substitution_too():
    pytest.importorskip("torch")
    from actbridge.testing import tiny_model

    target, source = tiny_model(d=32, layers=2), tiny_model(d=16, layers=2, seed=1)
    m = ab.AffineMap(np.zeros((5, 5), np.float32), np.zeros(5, np.float32))
    with pytest.raises(ab.InterventionError, match="the map is 5 -> 5") as caught:
        ab.substitute(target, 1, source, 0, m)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ab.SteerError)
