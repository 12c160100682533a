"""Loading a vision-language model's processor, also where its video half cannot be built.

``AutoProcessor.from_pretrained`` builds a model's whole processor. MiniCPM-V 4.6's includes a VIDEO
processor, which transformers implements on torchvision only: without torchvision the whole
processor refuses to load, although the signal model never passes a video and the IMAGE processor
has a PIL implementation. :func:`load_processor` therefore builds, for a local MiniCPM-V 4.6 folder
on a machine without torchvision, an image-only subclass of it (:func:`image_only_processor_class`):
the same class's image and text code (placeholders, slices, image ids, NaViT packing of the pixels,
left padding), without the video processor. With torchvision, or for any other model, it is
``AutoProcessor`` unchanged, so what a GPU machine loads is exactly the released processor.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

__all__ = ["image_only_processor_class", "load_processor", "save_minicpmv46_processor"]

_MINICPMV46 = "MiniCPMV4_6Processor"
_TOKEN_ATTRIBUTES = (
    "image_token",
    "video_token",
    "image_token_id",
    "video_token_id",
    "image_start_token",
    "image_end_token",
    "slice_start_token",
    "slice_end_token",
    "image_id_start_token",
    "image_id_end_token",
)


def _torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _processor_class(folder: Path) -> str | None:
    """The ``processor_class`` a local folder names (processor or preprocessor config)."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("processor_class")
            if value:
                return str(value)
    return None


def load_processor(source: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The processor of the model at ``source`` (hub id or folder): ``AutoProcessor``, except
    for a local MiniCPM-V 4.6 folder without torchvision, or whose full processor fails to load
    (with a warning): then the image-only subclass of :func:`image_only_processor_class`."""
    from transformers import AutoProcessor

    folder = Path(source)
    minicpm = folder.is_dir() and _processor_class(folder) == _MINICPMV46
    if minicpm and not _torchvision_available():
        return image_only_processor_class().from_pretrained(str(folder))
    try:
        return AutoProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (ImportError, KeyError, OSError, TypeError, ValueError) as exc:
        if not minicpm:
            raise
        # e.g. a torchvision that is installed but does not load: images need none of it
        warnings.warn(
            f"{folder}: the full MiniCPM-V 4.6 processor did not load ({type(exc).__name__}: "
            f"{exc}); using its image-only part",
            stacklevel=2,
        )
        return image_only_processor_class().from_pretrained(str(folder))


def save_minicpmv46_processor(
    folder: Path, tokenizer: Any, image_processor: Any, chat_template: str | None
) -> list[str]:
    """Write a MiniCPM-V 4.6 processor in the release's layout (see
    ``ImageOnlyMiniCPMV46Processor.save_pretrained``); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [str(f) for f in tokenizer.save_pretrained(folder)]
    if chat_template:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
        files.append(str(folder / "chat_template.jinja"))
    values = image_processor.to_dict()
    values["image_processor_type"] = "MiniCPMV4_6ImageProcessor"
    values["processor_class"] = _MINICPMV46
    (folder / "preprocessor_config.json").write_text(json.dumps(values, indent=2), encoding="utf-8")
    return [*files, str(folder / "preprocessor_config.json")]


_IMAGE_ONLY: type | None = None


def image_only_processor_class() -> type:
    """``ImageOnlyMiniCPMV46Processor`` (defined on first use: it subclasses a
    transformers class, and importing this module must not import transformers)."""
    global _IMAGE_ONLY
    if _IMAGE_ONLY is None:
        from transformers.models.minicpmv4_6.processing_minicpmv4_6 import MiniCPMV4_6Processor
        from transformers.processing_utils import ProcessorMixin

        class ImageOnlyMiniCPMV46Processor(MiniCPMV4_6Processor):
            """MiniCPM-V 4.6's processor for images and text only (no video processor, so no
            torchvision): its sub-processors are the image processor and the tokenizer, read
            from the same files; every other line of the processing is the released class's."""

            def __init__(
                self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None
            ) -> None:
                ProcessorMixin.__init__(
                    self, image_processor, tokenizer, chat_template=chat_template
                )
                self.slice_mode = image_processor.slice_mode
                self.video_slice_mode = False
                self.default_use_image_id = image_processor.use_image_id
                self.image_token_divisor = 4 if image_processor.downsample_mode == "4x" else 16
                self.video_token_divisor = 16
                for name in _TOKEN_ATTRIBUTES:
                    setattr(self, name, getattr(tokenizer, name))

            def __call__(self, images: Any = None, text: Any = None, videos: Any = None, **kw: Any):
                if videos is not None:
                    raise ValueError("this MiniCPM-V 4.6 processor has no video processor")
                return super().__call__(images=images, text=text, **kw)

            def save_pretrained(self, save_directory: Any, **kwargs: Any) -> list[str]:
                """Save as the release lays its processor out (tokenizer files,
                ``chat_template.jinja``, a flat ``preprocessor_config.json`` naming
                ``MiniCPMV4_6Processor``), so that ``AutoProcessor`` builds the full released
                processor from it wherever torchvision is installed, and
                :func:`load_processor` this one elsewhere."""
                return save_minicpmv46_processor(
                    Path(save_directory), self.tokenizer, self.image_processor, self.chat_template
                )

        _IMAGE_ONLY = ImageOnlyMiniCPMV46Processor
    return _IMAGE_ONLY
