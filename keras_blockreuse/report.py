"""`LoadReport`: what a `load_blocks` call did, as data and as a readable table."""

from __future__ import annotations

import dataclasses
import io


def format_bytes(n: float) -> str:
    """A size for people: `512 B`, `42.3 kB`, `1.5 MB`, `2.0 GB` (powers of 1000); a small
    file never shows as `0.0 MB`."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One variable or layer that does not fit: where it is, and what each side has."""

    block: str
    layer: str
    variable: str
    reason: str
    source: str = "-"
    target: str = "-"

    def __str__(self) -> str:
        return (
            f"{self.block} / {self.layer} / {self.variable}: {self.reason} "
            f"(source {self.source}, model {self.target})"
        )


@dataclasses.dataclass
class LoadReport:
    """The result of `load_blocks`.

    Attributes:
        source: the source's name (a path, or a model's name).
        loaded: `{target block: source block}` for every block whose values were assigned.
        skipped: the variables left unchanged because they did not fit (`on_mismatch="skip"`),
            and the other variables of their layers: a layer loads whole or not at all.
        missing: blocks of the model that the source does not have.
        unexpected: blocks of the source that were not loaded (not selected, excluded, or not
            in the model).
        untouched: blocks of the model whose weights this load did not change.
        mismatched: every variable that did not fit, skipped or adapted.
        adapted: variables loaded through a shape adaptation (`on_mismatch="adapt"`).
        pairing: `{target block: "name" | "path" | "order"}`: how each loaded block's layers
            were paired with the source's — by name, by Keras structural path, or by
            computation order known on both sides (see `load_blocks`).
        layer_pairs: `{target block: [(source layer, model layer), ...]}` for blocks not
            paired by name.
        matched_by_order: blocks whose layers were paired by computation order.
        not_loaded: selected blocks of which no variable was loaded (all skipped).
        unpaired: `(model blocks, source blocks)` left unpaired on both sides by a load that
            named no blocks (`only=` and `rename=` not given): the model has blocks the source
            lacks while the source has blocks the model lacks, which is what a renamed or
            damaged name looks like. `ok` is False; `only=` (a subset on purpose) or `rename=`
            (the names changed) says which was meant.
        suggested_rename: `{source block: model block}` pairing the blocks left `unpaired`
            where they pair one to one by their places in Keras's saving walk (for a legacy
            `.h5`: in computation order, automatic names of the same classes), with variables
            of the same shapes (the same model built in another session, its automatic names
            shifted: `sequential` saved, `sequential_3` now), as Keras's `load_weights` would
            pair them; `{}` otherwise. Not applied: pass `rename=report.suggested_rename` to
            load them.
        source_blocks: every block of the source, in order.
        frozen: blocks set to `trainable=False` (`freeze=True`).
        caveats: pairings the load could not check, said plainly (also warned): same-class
            layers paired by their automatic names alone, where the source records neither
            their Keras paths nor their order (a legacy `.h5`'s custom layers). Right unless
            their creation order changed since the file was saved; `ok` does not cover them.
        target_blocks: every block of the model, in order.
        variables_loaded: number of variables assigned.
        bytes_read: bytes of values read from the source.
        seconds: wall time of the load.

    Example:

    >>> report = model.load_blocks("blocks.h5", only=["block_1"])
    >>> report.ok, list(report.loaded)
    (True, ['block_1'])
    >>> print(report)
    """

    source: str
    loaded: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: list[Mismatch] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    untouched: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[Mismatch] = dataclasses.field(default_factory=list)
    adapted: list[Mismatch] = dataclasses.field(default_factory=list)
    pairing: dict[str, str] = dataclasses.field(default_factory=dict)
    layer_pairs: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    matched_by_order: list[str] = dataclasses.field(default_factory=list)
    not_loaded: list[str] = dataclasses.field(default_factory=list)
    unpaired: tuple[list[str], list[str]] = ([], [])
    suggested_rename: dict[str, str] = dataclasses.field(default_factory=dict)
    source_blocks: list[str] = dataclasses.field(default_factory=list)
    frozen: list[str] = dataclasses.field(default_factory=list)
    caveats: list[str] = dataclasses.field(default_factory=list)
    target_blocks: list[str] = dataclasses.field(default_factory=list)
    variables_loaded: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def loaded_blocks_in_order(self) -> list[str]:
        """The model's blocks, loaded or not, in the model's order."""
        return self._target_names()

    def _target_names(self) -> list[str]:
        return self.target_blocks or list(self.loaded) + self.untouched

    @property
    def ok(self) -> bool:
        """True when every selected block, layer and variable was loaded, nothing skipped,
        and no block was left unpaired on both sides (see `unpaired`)."""
        return (not self.skipped and not self.mismatched and not self.not_loaded
                and not (self.unpaired[0] and self.unpaired[1]))

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        table.add_column("block")
        table.add_column("status")
        table.add_column("paired by")
        table.add_column("detail")
        skipped = {m.block for m in self.skipped}
        adapted = {m.block for m in self.adapted}
        for name in self.loaded_blocks_in_order():
            source = self.loaded.get(name)
            notes = []
            if source is not None:
                status = "loaded, frozen" if name in self.frozen else "loaded"
                if source != name:
                    notes.append(f"from {source}")
                for source_layer, layer in self.layer_pairs.get(name, []):
                    if source_layer != layer:
                        notes.append(f"{layer} <- {source_layer}")
                if name in skipped:
                    status += ", partly"
                if name in adapted:
                    notes.append("adapted: " + ", ".join(
                        f"{m.layer}/{m.variable}" for m in self.adapted if m.block == name))
            else:
                status = "untouched"
                if name in self.missing:
                    notes.append("not in source")
                elif name not in skipped:
                    notes.append("not selected")
            for m in self.skipped:
                if m.block == name:
                    notes.append(f"skipped {m.layer}/{m.variable}: {m.reason} "
                                 f"(source {m.source}, model {m.target})")
            if name in self.not_loaded:
                status = "not loaded"
            table.add_row(name, status, self.pairing.get(name, "-"), "; ".join(notes))
        for name in self.unexpected:
            if name not in self.loaded.values() and name not in self._target_names():
                table.add_row(name, "not loaded", "-", "in source only")
        buffer = io.StringIO()
        console = Console(file=buffer, width=110, force_terminal=False, color_system=None)
        # The source on its own line, never wrapped: a table title would fold a long path
        # mid-name at the table's width.
        console.print(f"load_blocks from {self.source}", markup=False, highlight=False,
                      soft_wrap=True)
        console.print(table)
        console.print(
            f"{self.variables_loaded} variables, {format_bytes(self.bytes_read)} read, "
            f"{self.seconds:.3f} s; ok={self.ok}"
        )
        if self.unpaired[0] and self.unpaired[1]:
            console.print(
                f"Unpaired on both sides: model blocks {self.unpaired[0]} are not in the source "
                f"and source blocks {self.unpaired[1]} are not in the model. If names changed, "
                "pair them with rename={source block: model block}; to load a subset on "
                "purpose, pass only=[...].", markup=False, highlight=False, soft_wrap=True)
            if self.suggested_rename:
                console.print(
                    "They pair one to one by their places in the two models, as Keras's "
                    "load_weights pairs them (the same model with its automatic names shifted?): "
                    f"rename={self.suggested_rename} loads them "
                    "(report.suggested_rename).", markup=False, highlight=False, soft_wrap=True)
        for caveat in self.caveats:
            console.print(f"Caveat: {caveat}", markup=False, highlight=False, soft_wrap=True)
        if self.frozen:
            console.print("Frozen blocks take effect in training after model.compile().")
        if any(mode != "name" for mode in self.pairing.values()):
            console.print("Paired by: name = same layer name; path = same Keras structural "
                          "path; order = same position in computation order.")
        return buffer.getvalue().rstrip()

