"""Config schema of the storage backends (the ``[storage.NAME]`` tables).

Each backend states its settings and defaults once, here, beside the schema;
``backend`` selects the model.  Unknown keys are errors.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilesystemStorageSettings(_Strict):
    """Objects as files under a local directory (the embedded default).

    It has no URLs of its own: the link endpoint streams the file."""

    backend: Literal["filesystem"]
    path: str = "var/objects"


StorageSettings = Annotated[
    Union[FilesystemStorageSettings],
    Field(discriminator="backend"),
]
