"""Every PEFT adapter type with a state dict goes the whole way: trains on the devices, travels and is averaged
through the same wire and rule, and its export loads with plain PEFT (README's PEFT-type table)."""

import pytest
import torch
from inprocess_grid import simulate_in_this_process
from peft import PeftModel
from transformers import AutoModelForCausalLM

from stamen.server.checkpoint import last_round, load_round
from stamen.server.export import export_adapter
from stamen.shared.adapters import adapter_state, attach_adapter, load_adapter_state
from stamen.shared.base_model import load_base
from stamen.shared.run_folder import RunFolder

pytestmark = pytest.mark.usefixtures("flower_task_identity")
IDS = torch.tensor([[1, 7, 30, 4, 99, 12]])
# adapter type -> learning rate: VeRA learns two scale vectors per layer and prompt tuning a few embeddings,
# so they take bigger steps than the low-rank types
TYPES = {"loha": 0.02, "lokr": 0.02, "vera": 0.1, "adalora": 0.02,
         "prompt_tuning": 0.1, "prefix_tuning": 0.05, "p_tuning": 0.02}


@pytest.mark.parametrize("method", sorted(TYPES))
def test_a_two_round_federation_of_each_peft_type_lowers_heldout_loss_and_exports_for_plain_peft(
    method, tmp_path, tiny_folder
):
    settings = {"base-model": "tiny", "quantisation": "none", "adapter": method, "learning-rate": TYPES[method],
                "local-steps": 4, "virtual-tokens": 8, "lr-schedule": "constant"}
    simulate_in_this_process(settings, 2, 2, tmp_path, "run")
    run_dir = tmp_path / "run"
    rounds = [r for r in RunFolder(run_dir).rows() if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["eval_heldout_loss"] < rounds[0]["initial_heldout_loss"] - 0.01

    out = export_adapter(run_dir, tmp_path / "export")
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_folder), out)
    config = RunFolder(run_dir).run_config()
    model = attach_adapter(load_base("tiny", "none", "cpu").model, config.adapter, config.seed)
    adapter, _ = load_round(run_dir, last_round(run_dir))
    load_adapter_state(model, adapter)
    assert str(exported.peft_config["default"].peft_type.value).lower() == method
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=IDS).logits, model(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)
        with model.disable_adapter():
            base = model(input_ids=IDS).logits
    assert not torch.allclose(exported(input_ids=IDS).logits[:, -IDS.size(1):], base, atol=1e-4)
    assert set(adapter) == set(adapter_state(model))
