"""Configuration of the data pipeline: cleaning, tokenizer training and sharding."""

from dataclasses import dataclass, field

from pretrain.errors import ConfigError, check_choice, check_positive


@dataclass
class CleanConfig:
    inputs: list[str] = field(default_factory=list)
    """Raw inputs: .jsonl files (one {"text": ...} per line) or folders of text files."""
    glob: str = "**/*.txt"
    """Which files to read inside an input folder."""
    exclude: list[str] = field(default_factory=list)
    """fnmatch patterns, relative to the input folder, of files to skip (e.g. "site-packages/*")."""
    text_key: str = "text"
    """The field holding the document in jsonl inputs."""
    min_chars: int = 200
    """Documents shorter than this after normalization are dropped."""
    max_chars: int = 200_000
    """Documents longer than this are dropped (generated or binary-like files)."""
    docs_per_shard: int = 10_000
    """Cleaned documents per output jsonl file."""

    def __post_init__(self):
        check_positive("data.clean.min_chars", self.min_chars, allow_zero=True)
        check_positive("data.clean.docs_per_shard", self.docs_per_shard)
        if self.max_chars < self.min_chars:
            raise ConfigError("data.clean.max_chars", f"must be >= min_chars ({self.min_chars})")


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096
    """SentencePiece vocabulary size, special tokens included."""
    model_type: str = "bpe"
    """SentencePiece model type: bpe or unigram."""
    sample_docs: int = 20_000
    """Documents drawn (deterministically, by seed) from the cleaned corpus to train on."""
    max_sentence_length: int = 16_384
    """Longer training lines are skipped by SentencePiece."""
    seed: int = 1234

    def __post_init__(self):
        check_positive("data.tokenizer.vocab_size", self.vocab_size)
        check_positive("data.tokenizer.sample_docs", self.sample_docs)
        check_choice("data.tokenizer.model_type", self.model_type, ("bpe", "unigram"))


@dataclass
class ShardConfig:
    sequence_length: int = 256
    """Tokens per training sample (the model sees sequence_length inputs and targets)."""
    samples_per_shard: int = 2048
    """Samples per webdataset .tar shard."""
    valid_fraction: float = 0.05
    """Fraction of documents (by hash) held out for validation."""

    def __post_init__(self):
        check_positive("data.shard.sequence_length", self.sequence_length)
        check_positive("data.shard.samples_per_shard", self.samples_per_shard)
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError("data.shard.valid_fraction", "must be in [0, 1)")


@dataclass
class DataConfig:
    root: str = "data"
    """Folder holding the stages' outputs: cleaned/, tokenizer/, dataset/."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    seed: int = 1234
    """Seed of the sample order; the order is a pure function of (seed, manifest)."""

    @property
    def cleaned_dir(self) -> str:
        return f"{self.root}/cleaned"

    @property
    def tokenizer_dir(self) -> str:
        return f"{self.root}/tokenizer"

    @property
    def dataset_dir(self) -> str:
        return f"{self.root}/dataset"

