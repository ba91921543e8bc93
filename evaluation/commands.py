"""CLI commands of the evaluation suite (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.evaluation.config import (BpcEvalConfig, CopyEvalConfig, HarnessConfig, McEvalConfig, ReportConfig,
                               SpeedEvalConfig, TokenizerEvalConfig)
from lingraft.registry import Command

COMMANDS: list = [
    Command(path=("eval", "bpc"), config_cls=BpcEvalConfig, runner="lingraft.evaluation.text_tasks:run_bpc",
            help="bits per character and per byte on held-out text (sliding window)"),
    Command(path=("eval", "tokenizer"), config_cls=TokenizerEvalConfig,
            runner="lingraft.evaluation.text_tasks:run_tokenizer",
            help="compression statistics of the model's own tokenizer"),
    Command(path=("eval", "copy"), config_cls=CopyEvalConfig, runner="lingraft.evaluation.copy_task:run_copy",
            help="Darumeru copy task: repeat sentences and paragraphs through the chat template (greedy)"),
    Command(path=("eval", "mc"), config_cls=McEvalConfig, runner="lingraft.evaluation.mc:run_mc",
            help="multiple choice by log-likelihood: generic JSONL or PARus, RCB, RWSD, RuCoLA, RUSSE"),
    Command(path=("eval", "speed"), config_cls=SpeedEvalConfig, runner="lingraft.evaluation.speed:run_speed",
            help="generation tokens/s and characters/s, against the original model with --baseline"),
    Command(path=("eval", "report"), config_cls=ReportConfig, runner="lingraft.evaluation.report:run_report",
            help="side-by-side report of several models' results: report.json, report.md, report.png"),
    Command(path=("eval", "harness"), config_cls=HarnessConfig, runner="lingraft.evaluation.harness:run_harness",
            help="run lm-evaluation-harness (lm_eval --model hf) on a model folder, when installed"),
]
