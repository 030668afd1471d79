"""The progress bars of training and prediction: tqdm's, or none."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What the loops ask of a progress bar: tqdm's, or :class:`NoBar`."""

    def update(self, n: int = 1) -> object: ...

    def set_postfix(self, **kwargs: object) -> object: ...

    def close(self) -> object: ...


class NoBar:
    """Stands in for tqdm when no bar is asked for: the GPU check runs where only torch is installed."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_: object) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str | None) -> Progress:
    """A tqdm bar of ``total`` units named ``desc``, cleared when done; None: no bar."""
    if desc is None:
        return NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
