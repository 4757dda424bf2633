"""Static cost of a compiled kernel, read from its SASS: loops, what their bodies issue, and the cost per unit of
useful work (docs/design.md §6). No GPU is needed: the input is the text of ``cuobjdump -sass`` (the binary ships
with Triton); ``zoo/kernels/_aot.py`` compiles the specs and runs it (``python -m zoo.kernels._aot --loops``).

Method:

* Loops are backward branches: a ``BRA`` whose target address is at or before the branch. The loop is the address
  range [target, branch]; branches to one target are one loop; ranges that overlap without nesting are merged.
  Loops nest by containment. A loop's *own* instructions are its range minus the ranges of the loops inside it.
  The unconditional branch to itself after the last ``EXIT`` (the end-of-code trap) and the padding after it are
  not code.
* The cost of one program, per thread (every instruction is issued once per warp, so per-warp and per-thread
  counts are the same):

      I = top + sum over loops L of own(L) * runs(L),   runs(L) = trips[0] * ... * trips[depth(L) - 1]

  with ``top`` the instructions outside every loop, run once, and ``trips`` the average trip counts by loop depth
  at the benchmarked shape, which the op states (its kernel file, beside ``aot_specs()``): one number per depth,
  a tuple (one per loop of that depth, in address order), or ``{"unmasked": a, "masked": b}`` for a loop compiled
  twice, whose masked copy is the one with predicated global loads (the compiler may place either first). A loop
  the compiler unrolled is not in the SASS; its work is inside its parent's body (or in ``top``), so it is
  counted all the same.
* A kernel that runs one of several parts per program (``if part == ...``) compiles each part's loop inside a
  region that a conditional forward branch skips (or after a conditional ``EXIT``, for the last part): the
  code the compiler hoisted out of the loop lives there too and runs only in that part's programs. An outermost
  loop's entry ``{"entered": e, "trips": t}`` says so: its guard region is entered e times per program (the
  share of the programs that run the part) and the loop runs t trips per entry; the region's code outside the
  loop counts e times, not once. The guard is the nearest conditional forward branch before the loop (after the
  previous outermost loop) whose target lies past the loop and not past the next outermost loop; the last loop
  of an if / elif chain has none of its own, and its region starts at the previous guard's target (or after a
  conditional ``EXIT`` before it); a ``ValueError`` when there is none.
* The useful work a thread covers in one program is U = (useful units per program) / (32 * num_warps): a direct
  convolution counts the multiply-adds of the taps that land on the map, attention the query-key pairs inside
  the windows, elementwise kernels the elements. Padded taps, masked lanes and wasted logits are not units, so
  they show up as cost. The report gives I / U (instructions per unit) and the same for FFMA and the tensor-core
  instructions.
* The hot region is the loop (or the code outside loops) with the largest own(L) * runs(L); its body is counted
  by kind: FFMA and other FMAs, HMMA/HGMMA with their shapes, global/shared/local loads and stores with their
  width in bits, integer, predicate, move and constant-bank overhead, conversions.

What it cannot see: every instruction counts one, whatever its latency or throughput; memory stalls, occupancy,
cache hits, bank conflicts and the tensor cores' own time are invisible; both sides of a branch are counted
(predicated-off instructions are issued, so those are right). Use it to compare versions of a kernel, not to
predict times.

Only the standard library is imported here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = [
    "Instruction",
    "Loop",
    "count_instructions",
    "find_loops",
    "guard_regions",
    "parse_sass",
    "static_cost",
]

_LINE = re.compile(r"/\*(?P<address>[0-9a-fA-F]+)\*/\s+(?P<text>[^;]*?)\s*;")
_FUNCTION = re.compile(r"Function\s*:\s*(?P<name>\S+)")
_PREDICATE = re.compile(r"^@!?U?P(?:T|\d+)\s+")
_TARGET = re.compile(r"0x(?P<target>[0-9a-fA-F]+)\s*$")  # the last operand of BRA [!UP0,] 0x1c0

MEMORY_OPS = {
    "LDG": "global load",
    "STG": "global store",
    "LDS": "shared load",
    "STS": "shared store",
    "LDSM": "shared load",
    "STSM": "shared store",
    "LDGSTS": "global->shared copy",
    "LDL": "local load",
    "STL": "local store",
    "LD": "generic load",
    "ST": "generic store",
    "ATOM": "atomic",
    "ATOMG": "atomic",
    "ATOMS": "atomic",
    "RED": "atomic",
    "REDG": "atomic",
    "UTMALDG": "tma load",
    "UTMASTG": "tma store",
    "UBLKCP": "tma copy",
}
FMA_OPS = {"FFMA", "FFMA2", "HFMA2", "DFMA"}
MMA_OPS = {"HMMA", "HGMMA", "IMMA", "IGMMA", "DMMA", "QGMMA", "BMMA", "BGMMA", "OMMA"}
FP_OPS = {
    "FADD",
    "FADD2",
    "FMUL",
    "FMUL2",
    "FMNMX",
    "FSEL",
    "FSET",
    "FSWZADD",
    "MUFU",
    "FCHK",
    "FRND",
    "HADD2",
    "HMUL2",
    "HMNMX2",
    "DADD",
    "DMUL",
    "DMNMX",
}
CONVERT_OPS = {"F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "PRMT", "I2I", "I2IP"}
INT_OPS = {
    "IMAD",
    "IMUL",
    "IADD",
    "IADD3",
    "VIADD",
    "VIADDMNMX",
    "LEA",
    "SHF",
    "SHL",
    "SHR",
    "LOP",
    "LOP3",
    "IABS",
    "IMNMX",
    "VIMNMX",
    "VIMNMX3",
    "SEL",
    "BMSK",
    "BFE",
    "BFI",
    "FLO",
    "POPC",
    "IDP",
    "SGXT",
    "BREV",
    "ISCADD",
    "IMNMX3",
}
PREDICATE_OPS = {"ISETP", "FSETP", "DSETP", "HSETP2", "PSETP", "PLOP3", "P2R", "R2P", "VOTE", "VOTEU", "UP2UR"}
MOVE_OPS = {"MOV", "MOV32I", "CS2R", "S2R", "S2UR", "R2UR", "UR2UP"}
CONST_OPS = {"LDC", "ULDC"}
CONTROL_OPS = {
    "BRA",
    "BRX",
    "JMP",
    "JMX",
    "EXIT",
    "RET",
    "CALL",
    "BSSY",
    "BSYNC",
    "BREAK",
    "WARPSYNC",
    "BAR",
    "DEPBAR",
    "LDGDEPBAR",
    "NOP",
    "YIELD",
    "MEMBAR",
    "FENCE",
    "ERRBAR",
    "CCTL",
    "WARPGROUP",
    "SYNCS",
    "ELECT",
    "ACQBULK",
    "NANOSLEEP",
    "BPT",
    "KILL",
}
# Uniform-datapath twins of the integer, predicate and move instructions (UIADD3, UISETP, UMOV, ...)
UNIFORM = {
    "U" + op: kind for ops, kind in ((INT_OPS, "int"), (PREDICATE_OPS, "pred"), (MOVE_OPS, "move")) for op in ops
}
UNIFORM["UMOV"] = "move"
CATEGORIES = (
    "fma",
    "mma",
    "fp",
    "convert",
    "load",
    "store",
    "int",
    "pred",
    "move",
    "const",
    "shuffle",
    "control",
    "other",
)
OVERHEAD = ("int", "pred", "move", "const")  # index, mask and bookkeeping arithmetic


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: its address, guard predicate (``""``, ``"@P0"``, ``"@!P1"``), opcode with modifiers
    (``"LDG.E.128"``) and operand text."""

    address: int
    predicate: str
    opcode: str
    operands: str

    @property
    def op(self) -> str:
        """The mnemonic without modifiers (``"LDG"``)."""
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])

    def branch_target(self) -> int | None:
        """The target address of a direct branch (``BRA 0x1c0``, ``BRA.U !UP0, 0x1c0``), else None (a label, as
        nvdisasm prints them, is not read: use cuobjdump)."""
        if self.op != "BRA":
            return None
        match = _TARGET.search(self.operands.strip())
        return int(match.group("target"), 16) if match else None

    def is_backward_branch(self) -> bool:
        """A branch to this address or an earlier one (a loop's back edge); the unconditional branch to itself
        (the trap after the last EXIT) is not one."""
        target = self.branch_target()
        if target is None or target > self.address:
            return False
        return not (target == self.address and not self.predicate)

    def memory_width(self) -> int:
        """Bits per thread moved by a load or store (32 unless the opcode says 8, 16, 64 or 128; LDSM/STSM: 32
        per 8x8 matrix)."""
        mods = self.modifiers
        if self.op in ("LDSM", "STSM"):
            count = next((int(m) for m in reversed(mods) if m in ("1", "2", "4")), 1)
            return 32 * count
        for m in mods:
            if m in ("U8", "S8"):
                return 8
            if m in ("U16", "S16"):
                return 16
            if m in ("64", "128"):
                return int(m)
        return 32

    def memory_key(self) -> str | None:
        """``"LDG.128"``-style key of a load or store, else None."""
        if self.op not in MEMORY_OPS:
            return None
        if self.op.startswith("UTMA") or self.op == "UBLKCP":
            return self.op
        return f"{self.op}.{self.memory_width()}"

    def mma_macs(self) -> float:
        """Multiply-adds per thread of a tensor-core instruction: M x N x K of its shape over the threads that
        issue it together (a warpgroup of 128 for HGMMA and the other *GMMA, a warp of 32 for HMMA, IMMA, ...);
        0 for other instructions or an unknown shape."""
        if self.op not in MMA_OPS or not self.modifiers:
            return 0.0
        shape = self.modifiers[0]
        if "x" in shape:  # HGMMA.64x32x16
            sizes = shape.split("x")
            if len(sizes) == 3 and all(x.isdigit() for x in sizes):
                m, n, k = (int(x) for x in sizes)
                return m * n * k / 128
            return 0.0
        if not shape.isdigit():
            return 0.0
        if shape.startswith("16"):  # HMMA.16816: m16 n8 k16; HMMA.1688; IMMA.16832
            m, n, k = 16, int(shape[2]), int(shape[3:] or 0)
        elif shape.startswith("8"):  # HMMA.884, DMMA.884
            m, n, k = 8, 8, int(shape[2:] or 0)
        else:
            return 0.0
        return m * n * k / 32

    def category(self) -> str:
        """One of ``CATEGORIES``."""
        op = self.op
        if op in FMA_OPS:
            if op == "HFMA2" and "MMA" in self.modifiers and "-RZ, RZ" in self.operands:
                return "move"  # HFMA2.MMA Rd, -RZ, RZ, imm, imm: the compiler's way to put a constant in a register
            return "fma"
        if op in MMA_OPS:
            return "mma"
        if op in MEMORY_OPS:
            return "store" if MEMORY_OPS[op].endswith(("store", "atomic")) else "load"
        if op in CONVERT_OPS:
            return "convert"
        if op in FP_OPS:
            return "fp"
        if op in INT_OPS:
            if op == "IMAD" and "MOV" in self.modifiers:
                return "move"
            # bf16 -> fp32 is a 16-bit left shift: IMAD.U32 Rd, Ra, 0x10000, RZ or SHF.L.U32 Rd, Ra, 0x10, RZ
            args = [a.strip() for a in self.operands.split(",")]
            if op == "IMAD" and len(args) == 4 and args[2] == "0x10000" and args[3] == "RZ":
                return "convert"
            if op == "SHF" and self.modifiers[:1] == ("L",) and len(args) == 4 and args[2] == "0x10":
                return "convert"
            return "int"
        if op in PREDICATE_OPS:
            return "pred"
        if op in MOVE_OPS:
            return "move"
        if op in CONST_OPS:
            return "const"
        if op in UNIFORM:
            return UNIFORM[op]
        if op == "SHFL":
            return "shuffle"
        if op in CONTROL_OPS:
            return "control"
        return "other"


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """The instructions of each function in ``cuobjdump -sass`` (or ``nvdisasm``) output, by function name, in
    address order, up to the end-of-code trap (the unconditional branch to itself after the last EXIT)."""
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    ended = False
    for line in text.splitlines():
        header = _FUNCTION.search(line)
        if header:
            current = functions.setdefault(header.group("name"), [])
            ended = False
            continue
        match = _LINE.search(line)
        if not match or ended:
            continue
        if current is None:
            current = functions.setdefault("", [])
        text_ = match.group("text").strip()
        predicate = ""
        guard = _PREDICATE.match(text_)
        if guard:
            predicate = guard.group(0).strip()
            text_ = text_[guard.end() :]
        opcode, _, operands = text_.partition(" ")
        instruction = Instruction(int(match.group("address"), 16), predicate, opcode, operands.strip())
        if instruction.branch_target() == instruction.address and not predicate:
            ended = True  # the trap after the last EXIT; padding (NOPs) follows
            continue
        current.append(instruction)
    return functions


@dataclass
class Loop:
    """A loop: the address range [start, end] (header .. last backward branch), its depth (1 = outermost), the
    loops directly inside it."""

    start: int
    end: int
    depth: int = 1
    children: list[Loop] = field(default_factory=list)

    def contains(self, address: int) -> bool:
        return self.start <= address <= self.end

    def body(self, instructions: list[Instruction]) -> list[Instruction]:
        """Every instruction in the range, inner loops included."""
        return [i for i in instructions if self.contains(i.address)]

    def own(self, instructions: list[Instruction]) -> list[Instruction]:
        """The instructions of this loop that are not inside an inner loop."""
        return [i for i in self.body(instructions) if not any(c.contains(i.address) for c in self.children)]

    def walk(self):
        """This loop and every loop inside it, outer first."""
        yield self
        for child in self.children:
            yield from child.walk()


def find_loops(instructions: list[Instruction]) -> list[Loop]:
    """The outermost loops (each with its nest in ``children``), in address order."""
    ranges: dict[int, int] = {}
    for i in instructions:
        if i.is_backward_branch():
            target = i.branch_target()
            ranges[target] = max(ranges.get(target, i.address), i.address)
    merged: list[list[int]] = []  # partial overlaps (not nested) are one loop
    for start, end in sorted(ranges.items()):
        for other in merged:
            overlaps = other[0] <= start <= other[1] < end or start <= other[0] <= end < other[1]
            if overlaps:
                other[0], other[1] = min(other[0], start), max(other[1], end)
                break
        else:
            merged.append([start, end])
    loops = [Loop(s, e) for s, e in sorted(merged, key=lambda r: (r[0], -r[1]))]
    roots: list[Loop] = []
    stack: list[Loop] = []
    for loop in loops:
        while stack and not (stack[-1].start <= loop.start and loop.end <= stack[-1].end):
            stack.pop()
        if stack:
            loop.depth = stack[-1].depth + 1
            stack[-1].children.append(loop)
        else:
            roots.append(loop)
        stack.append(loop)
    return roots


def count_instructions(instructions: list[Instruction]) -> dict:
    """What a list of instructions issues: ``instructions``; per category (``CATEGORIES``); ``overhead`` (integer,
    predicate, move and constant-bank instructions); ``ffma`` (FFMA/FFMA2), ``hfma2``, ``fma`` (all FMAs);
    ``mma`` by opcode with its shape (``HGMMA.64x64x16.F32.BF16``); ``mma_macs``, their multiply-adds per thread
    (:meth:`Instruction.mma_macs`); ``memory``, loads and stores by op and width in bits (``LDG.128``);
    ``opcodes``, every mnemonic."""
    categories = Counter(i.category() for i in instructions)
    mma = Counter(i.opcode for i in instructions if i.category() == "mma")
    memory = Counter(key for i in instructions if (key := i.memory_key()))
    fma = [i for i in instructions if i.category() == "fma"]
    return {
        "instructions": len(instructions),
        "categories": {c: categories.get(c, 0) for c in CATEGORIES},
        "overhead": sum(categories.get(c, 0) for c in OVERHEAD),
        "ffma": sum(1 for i in fma if i.op in ("FFMA", "FFMA2")),
        "hfma2": sum(1 for i in fma if i.op == "HFMA2"),
        "fma": len(fma),
        "mma": dict(sorted(mma.items())),
        "mma_macs": sum(i.mma_macs() for i in instructions),
        "memory": dict(sorted(memory.items())),
        "opcodes": dict(Counter(i.op for i in instructions).most_common()),
    }


def _masked(loop: Loop, instructions: list[Instruction]) -> bool:
    """Whether the loop's own code has a predicated global load (the masked copy of a loop compiled twice)."""
    return any(i.predicate and i.op == "LDG" for i in loop.own(instructions))


def guard_regions(roots: list[Loop], instructions: list[Instruction]) -> dict[int, tuple[int, int]]:
    """The regions [first, last] (addresses, the loop included) in which the outermost loops are guarded, by the
    loop's start address (see the module docstring): after a conditional forward branch that skips to past the
    loop (and not past the next outermost loop), up to its target; for the last loop, from the target of the
    previous loop's guard when nothing falls through into it (the ``else`` of an if / elif chain: the code before
    it ends in an unconditional ``EXIT`` or branch), or after a conditional ``EXIT`` before the loop, to the end
    of the code. Loops without a guard are absent."""
    regions: dict[int, tuple[int, int]] = {}
    previous_target = None
    for position, loop in enumerate(roots):
        after = roots[position - 1].end if position else -1
        last_loop = position + 1 == len(roots)
        limit = instructions[-1].address + 1 if last_loop else roots[position + 1].start
        before = [i for i in instructions if after < i.address < loop.start and i.predicate]
        guard = next(
            (i for i in reversed(before) if i.op == "BRA" and loop.end < (i.branch_target() or -1) <= limit), None
        )
        if guard is not None:
            regions[loop.start] = (guard.address + 1, guard.branch_target() - 1)
            previous_target = guard.branch_target()
            continue
        if last_loop and previous_target is not None and after < previous_target <= loop.start:
            ends_before = [i for i in instructions if i.address < previous_target][-1]  # falls through, or not
            if not ends_before.predicate and ends_before.op in ("EXIT", "BRA"):
                regions[loop.start] = (previous_target, instructions[-1].address)
                continue
        if last_loop and any(i.op == "EXIT" for i in before):
            exit_ = next(i for i in reversed(before) if i.op == "EXIT")
            regions[loop.start] = (exit_.address + 1, instructions[-1].address)
        previous_target = None
    return regions


def _trip_table(
    roots: list[Loop], trips: tuple, instructions: list[Instruction]
) -> tuple[dict[int, float], dict[int, float]]:
    """Runs per program of every loop (by start address) from per-depth trip counts, and the entries per program
    of the guarded outermost loops' regions (by the loop's start address)."""
    table: dict[int, float] = {}
    entered: dict[int, float] = {}

    def visit(loop: Loop, outer_runs: float, index_at_depth: dict[int, int]) -> None:
        if loop.depth > len(trips):
            raise ValueError(
                f"the SASS has a loop at depth {loop.depth} (addresses {loop.start:#x}-{loop.end:#x}) but trip "
                f"counts were given for {len(trips)} depth(s)"
            )
        entry = trips[loop.depth - 1]
        if isinstance(entry, tuple):
            position = index_at_depth.get(loop.depth, 0)
            index_at_depth[loop.depth] = position + 1
            if position >= len(entry):
                raise ValueError(f"more loops at depth {loop.depth} than the {len(entry)} trip counts given")
            entry = entry[position]
        if isinstance(entry, dict) and "entered" in entry:
            if loop.depth != 1:
                raise ValueError(
                    f"only outermost loops have guards; the loop at {loop.start:#x} is at depth {loop.depth}"
                )
            entered[loop.start] = float(entry["entered"])
            entry = float(entry["entered"]) * float(entry["trips"])
        elif isinstance(entry, dict):
            entry = entry["masked" if _masked(loop, instructions) else "unmasked"]
        runs = outer_runs * float(entry)
        table[loop.start] = runs
        for child in loop.children:
            visit(child, runs, index_at_depth)

    counters: dict[int, int] = {}
    for root in roots:
        visit(root, 1.0, counters)
    return table, entered


def _per(value: float, units: float) -> float | None:
    return round(value / units, 3) if units else None


def static_cost(
    instructions: list[Instruction],
    num_warps: int,
    units_per_program: float | None = None,
    trips: tuple = (),
) -> dict:
    """The loop report of one kernel (see the module docstring).

    ``units_per_program``: useful work of one program (None: structure and counts only); ``trips``: average trip
    count of the loops by depth, outermost first (an entry may be a tuple, one per loop of that depth in address
    order). Returns a JSON-ready dict: ``loops`` (every loop: range, depth, own instructions, runs per program),
    ``hot`` (the hot region: where, own instructions, runs, counts by kind, instructions per FMA, share of the
    program), ``program`` (instructions, FFMA, FMA, MMA and their multiply-adds, overhead, loads and stores per
    thread and program), ``units_per_thread``, ``per_unit`` (the same per unit of useful work) and ``formula``.
    Raises ``ValueError`` when the SASS nests deeper than ``trips`` says."""
    roots = find_loops(instructions)
    loops = [loop for root in roots for loop in root.walk()]
    known = units_per_program is not None
    entered: dict[int, float] = {}
    if known:
        runs, entered = _trip_table(roots, tuple(trips), instructions)
    else:  # no trip counts: rank the loops by depth, then size
        runs = {loop.start: float("nan") for loop in loops}
    outside = [i for i in instructions if not any(root.contains(i.address) for root in roots)]
    guards = []  # (name, code of the guard region outside its loop, entries per program)
    regions_of = guard_regions(roots, instructions) if entered else {}
    for root in roots:
        if root.start in entered:
            if root.start not in regions_of:
                raise ValueError(
                    f"the loop at {root.start:#x}-{root.end:#x} is said to be guarded (entered), but no conditional "
                    f"forward branch or EXIT before it skips it"
                )
            first, last = regions_of[root.start]
            code = [i for i in outside if first <= i.address <= last]
            guards.append((f"guard of {root.start:#06x}", code, entered[root.start]))
    guarded = {i.address for _, code, _ in guards for i in code}
    top = [i for i in outside if i.address not in guarded]
    regions = (
        [("top", None, top, 1.0)]
        + [(name, None, code, runs_) for name, code, runs_ in guards]
        + [
            (f"loop {loop.start:#06x}-{loop.end:#06x}", loop, loop.own(instructions), runs[loop.start])
            for loop in loops
        ]
    )
    if known:
        hot = max(regions, key=lambda r: len(r[2]) * r[3])
    elif loops:
        deepest = max(loop.depth for loop in loops)
        hot = max((r for r in regions if r[1] is not None and r[1].depth == deepest), key=lambda r: len(r[2]))
    else:
        hot = regions[0]
    where, hot_loop, hot_body, hot_runs = hot
    hot_counts = count_instructions(hot_body)
    report: dict = {
        "loops": [
            {
                "start": f"{loop.start:#06x}",
                "end": f"{loop.end:#06x}",
                "depth": loop.depth,
                "instructions": len(loop.own(instructions)),
                "runs_per_program": runs[loop.start] if known else None,
            }
            for loop in loops
        ],
        "top_instructions": len(top),
        "guards": [{"where": name, "instructions": len(code), "runs_per_program": r} for name, code, r in guards],
        "hot": {
            "where": where,
            "depth": hot_loop.depth if hot_loop else 0,
            "runs_per_program": hot_runs if known else None,
            **hot_counts,
            "instructions_per_fma": _per(hot_counts["instructions"], hot_counts["fma"]),
        },
    }
    if not known:
        return report
    weighted = [(body, r) for _, _, body, r in regions]

    def total(key) -> float:
        return sum(key(count_instructions(body)) * r for body, r in weighted)

    threads = 32 * num_warps
    units = units_per_program / threads
    program = {
        "instructions": total(lambda c: c["instructions"]),
        "ffma": total(lambda c: c["ffma"]),
        "fma": total(lambda c: c["fma"]),
        "mma": total(lambda c: sum(c["mma"].values())),
        "mma_macs": total(lambda c: c["mma_macs"]),
        "overhead": total(lambda c: c["overhead"]),
        "loads": total(lambda c: c["categories"]["load"]),
        "stores": total(lambda c: c["categories"]["store"]),
    }
    report["program"] = {k: round(v, 3) for k, v in program.items()}
    report["units_per_thread"] = round(units, 4)
    report["per_unit"] = {k: _per(v, units) for k, v in program.items()}
    report["hot"]["share"] = round(len(hot_body) * hot_runs / program["instructions"], 3)
    terms = " + ".join(f"{len(body)} x {r:g}" for _, _, body, r in regions[1:])
    report["formula"] = (
        f"instructions per unit = (top + sum own(L) x runs(L)) / (units per program / (32 x num_warps)) = "
        f"({len(top)}{' + ' + terms if terms else ''}) / ({units_per_program:g} / (32 x {num_warps})) = "
        f"{program['instructions']:g} / {units:.4g} = {program['instructions'] / units:.3f}"
    )
    return report
