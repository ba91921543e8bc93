"""CLI commands of the vocabulary stage (registered by lingraft.cli)."""
from __future__ import annotations

from lingraft.registry import Command
from lingraft.vocabulary.config import TokenizerStatsConfig, TrainTokenizerConfig

COMMANDS: list = []

COMMANDS.append(Command(
    path=("tokenizer", "train"), config_cls=TrainTokenizerConfig, runner="lingraft.vocabulary.training:run_train",
    help="train a BPE or Unigram tokenizer from scratch, or with the pipeline of a base (--like)"))

COMMANDS.append(Command(
    path=("tokenizer", "stats"), config_cls=TokenizerStatsConfig, runner="lingraft.vocabulary.stats:run_stats",
    help="compare tokenizers on held-out text: chars/token, tokens/word, bytes/token, unk and byte-fallback rates"))

# init
from lingraft.vocabulary.init_config import InitConfig  # noqa: E402

COMMANDS.append(Command(
    path=("init",), config_cls=InitConfig, runner="lingraft.vocabulary.init_stage:run_init",
    help="swap a model's vocabulary for a new tokenizer and initialise the new embeddings "
         "(mean, weighted-mean, transtokenize, random)"))

# LEP vocabulary variants
from lingraft.vocabulary.variants_config import ExtendConfig, OptimizeConfig  # noqa: E402

COMMANDS.append(Command(
    path=("tokenizer", "extend"), config_cls=ExtendConfig, runner="lingraft.vocabulary.extend:run_extend",
    help="LEP Extended vocabulary: the base at its old ids plus new-language tokens and merges "
         "(--protect keeps e.g. English ids unchanged)"))

COMMANDS.append(Command(
    path=("tokenizer", "optimize"), config_cls=OptimizeConfig, runner="lingraft.vocabulary.optimize:run_optimize",
    help="LEP Optimized vocabulary: the base shrunk to its --keep most used tokens, plus --add new-language tokens"))

# refit the head after training
from lingraft.vocabulary.fit_head_config import FitHeadConfig  # noqa: E402

COMMANDS.append(Command(
    path=("fit-head",), config_cls=FitHeadConfig, runner="lingraft.vocabulary.fit_head:run_fit_head",
    help="refit an adapted model's learnt head rows on its own states (after its input rows trained)"))
