"""CLI commands of the data-prep stage (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.data_prep.alpaca_convert import AlpacaConvertConfig
from lingraft.data_prep.clean_config import CleanStageConfig
from lingraft.data_prep.pack_config import PackConfig
from lingraft.data_prep.sft_config import SftPackConfig
from lingraft.registry import Command

COMMANDS: list = []

COMMANDS.append(Command(
    path=("prep", "pack"), config_cls=PackConfig, runner="lingraft.data_prep.pack:run_pack",
    help="tokenize cleaned text into packed, indexed token shards (uint16/uint32 + sample index)",
    aliases={"--in": "input", "--source": "sources"}))

COMMANDS.append(Command(
    path=("prep", "clean"), config_cls=CleanStageConfig, runner="lingraft.data_prep.clean_stage:run_clean",
    help="clean, deduplicate and mix text sources (by characters) into JSONL parts",
    aliases={"--source": "sources"}))

COMMANDS.append(Command(
    path=("prep", "sft"), config_cls=SftPackConfig, runner="lingraft.data_prep.sft_pack:run_sft_pack",
    help="render chat JSONL with the model's chat template into packed shards with an assistant-only loss mask",
    aliases={"--in": "input"}))

COMMANDS.append(Command(
    path=("prep", "alpaca"), config_cls=AlpacaConvertConfig, runner="lingraft.data_prep.alpaca_convert:run_alpaca_convert",
    help="turn Alpaca-style (instruction, instances) task JSONL into chat messages JSONL for prep sft",
    aliases={"--in": "input"}))
