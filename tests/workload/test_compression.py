import torch
from torch import nn

from etj_workload import compression as c
from etj_workload.config import AccuracyGuard, CompressionPlan, PruneSpec, QuantizeSpec, Stage, Trigger
from etj_workload.models import DigitsCnn, DigitsMlp


def test_l1_prune_zeroes_the_amount_and_keeps_parameter_identity() -> None:
    torch.manual_seed(0)
    model = DigitsMlp()
    params_before = {id(p) for p in model.parameters()}
    c.apply_prune(model, PruneSpec(0.5))
    assert {id(p) for p in model.parameters()} == params_before
    total, nonzero = c.count_parameters(model)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    biases = total - weights
    assert nonzero <= weights // 2 + biases + 3 and total == 50826


def test_structured_prune_spares_the_output_layer() -> None:
    model = DigitsCnn()
    names = c.apply_prune(model, PruneSpec(0.5, "lnStructured"))
    assert "head.4" not in names and "features.0" in names
    rows = model.features[0].weight.flatten(1).abs().sum(dim=1)
    assert int((rows == 0).sum()) == 16


def test_snapshot_restore_undoes_a_prune_in_place() -> None:
    torch.manual_seed(0)
    model = DigitsMlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = c.snapshot(model)
    c.apply_prune(model, PruneSpec(0.9))
    c.restore_snapshot(model, saved)
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_int8_copy_is_smaller_and_close() -> None:
    torch.manual_seed(0)
    model = DigitsMlp().eval()
    quantized = c.quantized_copy(model)
    x = torch.rand(16, 64)
    assert torch.allclose(model(x), quantized(x), atol=0.05)
    assert c.serialized_size(quantized).raw_bytes * 3 < c.serialized_size(model).raw_bytes
    assert model.net[1].weight.dtype == torch.float32  # the original is untouched


def test_manager_keeps_good_stages_and_rolls_back_bad_ones() -> None:
    torch.manual_seed(0)
    model = DigitsMlp()
    x = torch.rand(64, 64)
    labels = model(x).argmax(dim=1).detach()  # the model is 100% "accurate" on its own labels

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x).argmax(dim=1) == labels).float().mean())

    plan = CompressionPlan(
        (
            Stage("gentle", Trigger(epoch=1), prune=PruneSpec(0.05)),
            Stage("brutal", Trigger(step=3), prune=PruneSpec(0.95, "lnStructured")),
            Stage("q", Trigger(epoch=5), quantize=QuantizeSpec()),
        ),
        AccuracyGuard(max_drop=0.05),
    )
    manager = c.CompressionManager(plan, evaluate)
    assert [s.name for s in manager.due(epoch=1, step=0)] == ["gentle"]
    assert [s.name for s in manager.due(epoch=0, step=0, final=True)] == ["gentle", "brutal", "q"]
    gentle = manager.apply(plan.stages[0], model, epoch=1, step=0)
    brutal = manager.apply(plan.stages[1], model, epoch=1, step=3)
    assert gentle.applied and not gentle.rolled_back
    assert brutal.rolled_back and not brutal.applied and brutal.accuracy_after < 0.9
    assert evaluate(model) >= 0.95  # the rollback restored the weights
    q = manager.apply(plan.stages[2], model, epoch=5, step=9)
    assert q.applied and manager.quantized is not None
    assert q.size_bytes_after * 2 < q.size_bytes_before
    assert manager.done == {"gentle", "brutal", "q"} and manager.kept == ["gentle", "q"]
    status = q.to_status()
    assert status["serializedFormat"] == c.SERIALIZED_FORMAT and "rolledBack" in status


def test_reapply_structure_lets_a_pruned_state_dict_load() -> None:
    plan = CompressionPlan((Stage("p", Trigger(epoch=0), prune=PruneSpec(0.5)),))
    source = DigitsMlp()
    manager = c.CompressionManager(plan, lambda m: 1.0)
    manager.apply(plan.stages[0], source, epoch=0, step=0)
    target = DigitsMlp()
    fresh = c.CompressionManager(plan, lambda m: 1.0)
    fresh.reapply_structure(target, manager.state_dict())
    target.load_state_dict(source.state_dict())
    x = torch.rand(4, 64)
    assert torch.equal(source(x), target(x)) and fresh.kept == ["p"]
