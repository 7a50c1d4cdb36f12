"""Every option of every config group composes, and what can be built without user data builds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from zf_lightning.conf import CONF_DIR
from zf_lightning.runs.pipeline import build_callbacks, build_datamodule, build_loggers, build_module


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_the_tree_has_the_agreed_groups() -> None:
    for group in ("data", "model", "output", "ablation", "regularizer", "optim", "trainer", "logger", "callbacks",
                  "paths", "hydra", "debug"):
        assert options(group), f"zf_lightning/conf/{group}/ is empty"
    assert {"plain", "kla", "aux", "kla_aux"} <= set(options("ablation"))


@pytest.mark.parametrize("ablation", options("ablation"))
@pytest.mark.parametrize("optim", options("optim"))
def test_ablation_and_optim_options_build_a_module(
    compose_train: Callable[..., DictConfig], ablation: str, optim: str
) -> None:
    cfg = compose_train(f"ablation={ablation}", f"optim={optim}")
    lit = build_module(cfg, build_datamodule(cfg))
    w0, w_late = lit.weights(0), lit.weights(10**6)
    assert w_late["kl"] == 1.0
    assert (w0["kl"] == pytest.approx(0.2)) == ablation.startswith("kla")
    assert (w0["aux"] > 0) == ablation.endswith("aux")
    optimizers = lit.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    assert optimizer.defaults["eps"] == 1e-5


@pytest.mark.parametrize("model", options("model"))
def test_model_options_build_on_the_default_data(compose_train: Callable[..., DictConfig], model: str) -> None:
    overrides = [f"model={model}"]
    if model == "zforcing":
        overrides.append("model.rnn_dim=16")
    cfg = compose_train(*overrides, tiny=False)
    lit = build_module(cfg, build_datamodule(cfg))
    assert type(lit.model).__name__.lower().startswith(model.replace("_", "")[:3])


@pytest.mark.parametrize("regularizer", options("regularizer"))
def test_regularizer_options_build_a_module(compose_train: Callable[..., DictConfig], regularizer: str) -> None:
    cfg = compose_train(f"regularizer={regularizer}", "data=set_parity", "model=rnn", tiny=False)
    lit = build_module(cfg, build_datamodule(cfg))
    assert (lit.regularizer is None) == (regularizer == "none")
    assert lit.regularizer is None or lit.regularizer.name == regularizer


@pytest.mark.parametrize("output", options("output"))
def test_output_options_compose_and_mismatches_are_clear_errors(
    compose_train: Callable[..., DictConfig], output: str
) -> None:
    cfg = compose_train(f"output={output}")
    assert cfg.model.head._partial_ is True
    dm = build_datamodule(cfg)
    if output == "bernoulli":
        assert type(build_module(cfg, dm).model.output_head).__name__ == "BernoulliHead"
    else:  # the embedded MNIST is binary: any other head must be refused with the fix in the message
        from hydra.errors import InstantiationException

        with pytest.raises(InstantiationException, match="output=bernoulli for binary pixels"):
            build_module(cfg, dm)


def test_data_picks_its_natural_head_and_the_command_line_wins(compose_train: Callable[..., DictConfig]) -> None:
    assert compose_train().model.head._target_.endswith("BernoulliHead")
    assert compose_train("data=lgssm", tiny=False).model.head._target_.endswith("GaussianHead")
    assert compose_train("data=sentences", tiny=False).model.head._target_.endswith("CategoricalHead")
    assert compose_train("output=gaussian").model.head._target_.endswith("GaussianHead")


@pytest.mark.parametrize("data", options("data"))
def test_data_options_compose(compose_train: Callable[..., DictConfig], data: str) -> None:
    cfg = compose_train(f"data={data}", tiny=False)
    assert cfg.data._target_.startswith("zf_lightning.data.")
    assert "batch_size" in cfg.data


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_instantiate_offline(compose_train: Callable[..., DictConfig], logger: str) -> None:
    cfg = compose_train(f"logger={logger}")
    loggers = build_loggers(cfg)
    names = {type(lg).__name__ for lg in loggers}
    assert "CSVLogger" in names  # CSV is always on: local tools read it back
    if "wandb" in cfg.logger:
        assert cfg.logger.wandb.offline is True


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_and_callbacks_options(compose_train: Callable[..., DictConfig], trainer: str) -> None:
    cfg = compose_train(f"trainer={trainer}")
    assert cfg.trainer.gradient_clip_val == 100.0
    if cfg.trainer.accelerator == "cpu":
        trainer_obj = instantiate(cfg.trainer, logger=False, callbacks=build_callbacks(cfg))
        assert trainer_obj.gradient_clip_val == 100.0


@pytest.mark.parametrize("group", ["debug", "experiment", "sweep"])
def test_optional_groups_compose(compose_train: Callable[..., DictConfig], group: str) -> None:
    for option in options(group):
        cfg = compose_train(f"{group}={option}", tiny=False)
        assert isinstance(cfg, DictConfig)


def test_output_dirs_are_unique_per_job() -> None:
    text = (CONF_DIR / "hydra" / "default.yaml").read_text()
    assert "%f" in text and "${hydra.job.num}" in text


def test_unknown_option_is_a_clear_hydra_error(compose_train: Callable[..., DictConfig]) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="ablation"):
        compose_train("ablation=nope")


def test_eval_config_requires_a_checkpoint(tmp_path: Path) -> None:
    from omegaconf.errors import MissingMandatoryValue

    from tests.conftest import compose_config

    cfg = compose_config("eval", [f"paths.output_dir={tmp_path}"])
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.ckpt_path
