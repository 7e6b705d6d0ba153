"""Import and export of checkpoint files: torch.save files (.pt, .pth, .ckpt, .bin),
safetensors files, folders of them (Hugging Face models, Trainer checkpoints), and opaque
files. The CLI's ``commit`` and ``checkout`` are built on ``importer`` and ``exporter``."""

from .importer import CommitResult, InputFile, collect, commit_files

__all__ = ["CommitResult", "InputFile", "collect", "commit_files"]
