import pytest
import torch

from grokinterp.config import GrokinterpError
from grokinterp.tasks import MODULAR_OPS, make_task

P = 7


def _expected(op: str, a: int, b: int, p: int) -> int:
    inv = pow(b, p - 2, p) if b % p else None
    return {
        "mod_add": (a + b) % p,
        "mod_sub": (a - b) % p,
        "mod_mul": (a * b) % p,
        "mod_div": (a * inv) % p if inv is not None else None,
        "mod_x2_y2": (a * a + b * b) % p,
        "mod_x2_xy_y2": (a * a + a * b + b * b) % p,
        "mod_x2_xy_y2_x": (a * a + a * b + b * b + a) % p,
        "mod_x3_xy": (a**3 + a * b) % p,
        "mod_x3_xy2_y": (a**3 + a * b * b + b) % p,
        "mod_odd_div_else_sub": ((a * inv) % p if b % 2 == 1 else (a - b) % p),
    }[op]


@pytest.mark.parametrize("op", sorted(MODULAR_OPS))
def test_every_modular_op_matches_python_arithmetic_on_all_pairs(op):
    task = make_task(op, p=P, train_fraction=0.5, seed=3)
    x = torch.cat([task.x_train, task.x_test])
    y = torch.cat([task.y_train, task.y_test])
    pairs = {(int(a), int(b)) for a, b, _ in x}
    expected_pairs = {(a, b) for a in range(P) for b in range(P) if op != "mod_div" or b != 0}
    assert pairs == expected_pairs  # every valid pair exactly once
    assert len(pairs) == len(y)
    for (a, b, eq), label in zip(x.tolist(), y.tolist(), strict=True):
        assert eq == P
        assert label == _expected(op, a, b, P), (op, a, b)


def test_split_is_disjoint_deterministic_and_sized():
    t1 = make_task("mod_add", p=13, train_fraction=0.3, seed=1)
    t2 = make_task("mod_add", p=13, train_fraction=0.3, seed=1)
    t3 = make_task("mod_add", p=13, train_fraction=0.3, seed=2)
    assert torch.equal(t1.x_train, t2.x_train) and torch.equal(t1.x_test, t2.x_test)
    assert not torch.equal(t1.x_train, t3.x_train)
    train = {tuple(r) for r in t1.x_train.tolist()}
    test = {tuple(r) for r in t1.x_test.tolist()}
    assert not train & test
    assert len(train) == round(0.3 * 169) and len(train) + len(test) == 169


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("mod_div", {"p": 8}, "prime"),
        ("mod_add", {"train_fraction": 1.5}, "train_fraction"),
        ("mod_add", {"train_fraction": 0}, "train_fraction"),
        ("mod_add", {"p": 1}, "p="),
        ("sparse_parity", {"n": 3, "k": 5}, "k=5"),
        ("xor_cluster", {"eps": -1}, "eps"),
        ("mod_add", {"bogus": 1}, "bogus"),
        ("nope", {}, "available"),
        ("mnist", {}, "IDX"),
        ("mnist", {"path": "/nonexistent"}, "not found"),
    ],
)
def test_bad_task_parameters_give_one_line_errors(name, params, match):
    with pytest.raises(GrokinterpError, match=match) as e:
        make_task(name, **params)
    assert "\n" not in str(e.value)


def test_sparse_parity_labels_are_parity_of_first_k_bits():
    t = make_task("sparse_parity", n=10, k=3, n_train=200, n_test=50, seed=0)
    prod = t.x_train[:, :3].prod(1)
    assert torch.equal(t.y_train, (prod < 0).long())
    assert set(t.x_train.unique().tolist()) == {-1.0, 1.0}


def test_xor_cluster_structure():
    t = make_task("xor_cluster", dimension=20, eps=0.05, n_train=100, n_test=20)
    assert torch.allclose(t.x_train[:, 2:].abs(), torch.tensor(0.05))
    assert torch.equal(t.y_train, (t.x_train[:, 0] * t.x_train[:, 1] > 0).long())


def test_digits_ships_offline():
    t = make_task("digits", n_train=500)
    assert t.x_train.shape == (500, 64) and t.n_classes == 10 and float(t.x_train.max()) <= 1.0


def test_mnist_reads_idx_files(tmp_path):
    import numpy as np

    def write(name, arr, magic_dims):
        header = bytes([0, 0, 8, len(magic_dims)]) + b"".join(
            d.to_bytes(4, "big") for d in magic_dims
        )
        (tmp_path / name).write_bytes(header + arr.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    write("train-images-idx3-ubyte", rng.integers(0, 255, (20, 4, 4)), [20, 4, 4])
    write("train-labels-idx1-ubyte", rng.integers(0, 10, 20), [20])
    write("t10k-images-idx3-ubyte", rng.integers(0, 255, (5, 4, 4)), [5, 4, 4])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([1, 2])
    )
    with pytest.raises(GrokinterpError, match="truncated"):
        make_task("mnist", path=str(tmp_path), n_train=10, n_test=5)
    write("t10k-labels-idx1-ubyte", rng.integers(0, 10, 5), [5])
    t = make_task("mnist", path=str(tmp_path), n_train=10, n_test=5)
    assert t.x_train.shape == (10, 16) and t.x_test.shape == (5, 16)
