"""CLI commands of the propagation stage (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.registry import Command
from lingraft.propagate.lep.config import PropagateConfig

COMMANDS: list = []

COMMANDS.append(Command(
    path=("propagate",), config_cls=PropagateConfig, runner="lingraft.propagate.lep.stage:run_propagate",
    help="LEP: put an adapted base model's vocabulary into an instruct sibling "
         "(swap, overlap or conversion of the embedding tables)"))

# Hydra: several vocabularies and heads over one body
from lingraft.propagate.hydra.config import GenerateConfig, HydraExportConfig, HydraPlainConfig  # noqa: E402

COMMANDS.append(Command(
    path=("hydra", "export"), config_cls=HydraExportConfig, runner="lingraft.propagate.hydra.export:run_hydra_export",
    help="stack two models sharing one body into a Hydra model: both input vocabularies, one head per language"))

COMMANDS.append(Command(
    path=("hydra", "plain"), config_cls=HydraPlainConfig, runner="lingraft.propagate.hydra.export:run_hydra_plain",
    help="export one language of a Hydra model as a plain Hugging Face checkpoint"))

COMMANDS.append(Command(
    path=("generate",), config_cls=GenerateConfig, runner="lingraft.propagate.hydra.generate:run_generate",
    help="generate from a Hydra model (--head picks the output language) or a plain Hugging Face model"))

# Self-calibration: the instruct model's own answers + copy tasks -> LoRA fine-tune of the propagated model
from lingraft.propagate.calibrate.config import CalibrateConfig  # noqa: E402

COMMANDS.append(Command(
    path=("calibrate",), config_cls=CalibrateConfig, runner="lingraft.propagate.calibrate.stage:run_calibrate",
    help="LEP self-calibration: the instruct model answers prompts (resumable), bad answers are filtered, "
         "copy tasks added, and the propagated model is fine-tuned on the result",
    aliases={"--prompt-file": "prompts"}))

# Skill packs: tuned − base as compressed, composable deltas (GraftLLM)
from lingraft.propagate.skillpack.config import (  # noqa: E402
    SkillpackApplyConfig,
    SkillpackCreateConfig,
    SkillpackInspectConfig,
    SkillpackVerifyConfig,
)

COMMANDS.append(Command(
    path=("skillpack", "create"), config_cls=SkillpackCreateConfig, runner="lingraft.propagate.skillpack.stage:run_create",
    help="store tuned − base as a skill pack: energy-truncated SVD with int8/int4 bands for matrices, "
         "changed rows (or a new vocabulary's tables and token map) for embeddings",
    aliases={"--beta": "energy"}))

COMMANDS.append(Command(
    path=("skillpack", "apply"), config_cls=SkillpackApplyConfig, runner="lingraft.propagate.skillpack.apply:run_apply",
    help="rebuild a tuned model: apply one or more skill packs, in order, to a model",
    aliases={"--pack": "packs"}))

COMMANDS.append(Command(
    path=("skillpack", "verify"), config_cls=SkillpackVerifyConfig, runner="lingraft.propagate.skillpack.stage:run_verify",
    help="each module's relative reconstruction error and size against the dense delta"))

COMMANDS.append(Command(
    path=("skillpack", "inspect"), config_cls=SkillpackInspectConfig,
    runner="lingraft.propagate.skillpack.stage:run_inspect",
    help="show a skill pack's manifest: base, policies, ranks, bits and sizes"))
