"""Fit before you load: where the teacher goes on the devices a job holds, planned from config.json
alone. The family's base model is built on the meta device (shapes only, nothing allocated or read)
and each top-level module counted in the precision. Per GPU, in bytes (B batch_tokens, K the
longest prompt, b bytes per element; d width, I MLP width, H heads, Hkv key/value heads, hd head
width, from config.json):

  weights      the modules it holds (embeddings, blocks, final norm; the base model has no LM head)
  kept prefix  B/3 x 2 Hkv hd b: keys and values of a batch's heads and stems (packing.PREFIX_SHARE:
               a sixth of B), kept for their children while a block runs every level, plus one child
               level's copy of its ancestors' (lm.block_forward)
  activations  B x (2 x 2 d b: the residual stream into and out of a block for up to 2 B positions
               (a batch's tails hold 4.6-5.3 times its prefixes on weather: about B; doubled for margin)
               + 2 K b: every level's mask (R, 1, T, K), kept through the forward
               + the larger of one level's attention, (2 d + (H + 2 Hkv) hd) b + 2 H K 4 + 7/6 x 2 H hd 4
               (normed states, q, k, v; the math kernel's fp32 scores and probabilities and keys and
               values repeated to every head: SDPA falls back to it with a float mask and grouped keys)
               and its MLP, (2 d + 4 I) b (Phi-3's fused gate and up 2 I, activation and product I each))
  reserve      1 GiB: CUDA context, cuBLAS workspaces, the SCA's weights, allocator fragmentation

For GPT-2 small in fp32 at P = 192 (K = 892) that is 130 kB per budget token, against a measured
71.5 kB on the CPU (docs/benchmarks.md: peak RSS 5.9 GB at 65,536 tokens, 1.8 GB at 8,192). Not
counted: the SCA's (W, d, d) fp32 scores per chunk of W windows (extract.py: W = 8 B / 6 over a
window's prefix tokens, so larger for datasets of few variables).

One copy per GPU when a whole copy fits every GPU; else the blocks split over the GPUs (an
accelerate device map: blocks whole, embeddings on the first GPU, final norm on the last, each GPU
filled to the same share of its room); else one sentence: the model's size, the GPUs' memory and
what would fit. The CPU is not planned (host memory is not asked).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from transformers import PretrainedConfig

from .devices import device_memory, token_budget
from .errors import InputError
from .families import family_of
from .lm import DTYPES, LAYOUTS
from .units import gib

RESERVE = 2**30          # per GPU (module opening)
DEFAULT_PROMPT = 2048    # K when the job's prompts are not known; weather's longest prompt at P = 192
#                          is 892 tokens with GPT-2's tokenizer, 1,194 with Llama 3's, 1,784 with Qwen2's
MIN_BATCH_TOKENS = 1024  # the schema's minimum of batch_tokens
# With batch_tokens null, one copy per GPU is preferred down to this budget, before a split at a larger one:
# copies run as many batches at once as there are GPUs, a split one at a time.
COPIES_FLOOR = 8192


def meta_model(config: PretrainedConfig, layers: int | None = None) -> torch.nn.Module:
    """The family's base model with its first `layers` blocks (None: all) on the meta device: shapes
    and dtypes only, no memory allocated and no weight read."""
    config = copy.deepcopy(config)
    if layers is not None:
        config.num_hidden_layers = min(layers, config.num_hidden_layers)   # keep_layers refuses a larger one
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = config.layer_types[:config.num_hidden_layers]
    with torch.device("meta"):
        return family_of(config).model_class(config)


def module_bytes(config: PretrainedConfig, precision: str, layers: int | None = None) -> dict[str, int]:
    """Bytes of each top-level module of the family's base model in `precision`, each decoder block
    on its own ("layers.0", ...), only the first `layers` blocks (None: all), counted on meta_model's
    build. Buffers (rotary frequencies) count at their own dtype."""
    model = meta_model(config, layers)
    size, blocks = DTYPES[precision].itemsize, LAYOUTS[config.model_type].blocks
    counted = {}
    for name, module in model.named_children():
        for part, child in (module.named_children() if name == blocks else [(None, module)]):
            counted[name if part is None else f"{name}.{part}"] = (
                sum(p.numel() for p in child.parameters()) * size
                + sum(b.numel() * b.element_size() for b in child.buffers()))
    return counted


def per_token_bytes(config: PretrainedConfig, precision: str, prompt_tokens: int) -> tuple[float, float]:
    """(kept prefix states, activations) per token of batch_tokens, in bytes, on each GPU that holds
    blocks (module opening)."""
    b, K = DTYPES[precision].itemsize, prompt_tokens
    d, H = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or H
    hd = getattr(config, "head_dim", None) or d // H
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d  # GPT-2: 4 d
    kept = 2 * kv_heads * hd * b / 3
    attention = (2 * d + (H + 2 * kv_heads) * hd) * b + 2 * H * K * 4 + 7 / 6 * 2 * H * hd * 4
    mlp = (2 * d + 4 * inner) * b
    return kept, 2 * 2 * d * b + 2 * K * b + max(attention, mlp)


@dataclass(frozen=True)
class DevicePlan:
    """What one device holds and needs, in bytes; memory None: not planned (the CPU)."""
    device: str
    memory: int | None
    weights: int
    kept_prefix: int
    activations: int
    reserve: int
    blocks: list[int]          # the decoder blocks it holds

    @property
    def total(self) -> int:
        """Everything it needs."""
        return self.weights + self.kept_prefix + self.activations + self.reserve


@dataclass(frozen=True)
class Plan:
    """Where the teacher goes: placement single, data_parallel, model_parallel or refused (the reason
    is then the refusal's sentence); device_map: module -> device, for model_parallel only."""
    placement: str
    reason: str
    precision: str
    weights: int               # the whole model's, in the precision
    batch_tokens: int
    prompt_tokens: int
    devices: list[DevicePlan]
    device_map: dict | None

    def require(self) -> Plan:
        """This plan, when it places the model.

        Raises:
            InputError: the plan refuses (its reason is the sentence).
        """
        if self.placement == "refused":
            raise InputError(self.reason)
        return self

    def as_dict(self) -> dict:
        """JSON-ready, as preflight.json records it."""
        return asdict(self) | {"devices": [asdict(device) | {"total": device.total} for device in self.devices]}


def _split(first: int, blocks: list[int], last: int, rooms: list[float]) -> list[int] | None:
    """Blocks per device, in order, each device filled to the same share of its room, that share as
    small as it can be; None when they do not fit. `first` / `last`: what the first / last device
    holds besides blocks (the embeddings, the final norm)."""
    def fill(share: float) -> list[int] | None:
        counts, j = [], 0
        for k, room in enumerate(rooms):
            load, start = (first if k == 0 else 0) + (last if k == len(rooms) - 1 else 0), j
            while j < len(blocks) and load + blocks[j] <= share * room:
                load, j = load + blocks[j], j + 1
            if load > share * room:
                return None
            counts.append(j - start)
        return counts if j == len(blocks) else None

    if fill(1.0) is None:
        return None
    low, high = 0.0, 1.0
    for _ in range(40):
        low, high = ((low + high) / 2, high) if fill((low + high) / 2) is None else (low, (low + high) / 2)
    return fill(high)


def plan_placement(config: PretrainedConfig, precision: str, layers: int | None, devices: list[str],
                   placement: str = "auto", batch_tokens: int | None = None, prompt_tokens: int | None = None,
                   memory: list[int | None] | None = None, name: str = "the model") -> Plan:
    """The placement of the model `config` describes on `devices`, from its config alone.

    Args:
        config: the model's config (checkpoint.load_config); precision: "fp32", "fp16" or "bf16";
        layers: config key model.layers (None: every block); devices: the job's devices.
        placement: config key placement; batch_tokens: the config's; None: the device default
            (devices.token_budget), halved until the placement fits (module opening).
        prompt_tokens: the job's longest prompt (None: DEFAULT_PROMPT); memory: bytes per device
            (None: device_memory; tests give CPU entries a size this way); name: the model, for messages.
    Returns:
        The Plan; placement "refused" carries the refusal's sentence (Plan.require raises it).
    """
    K, layout = prompt_tokens or DEFAULT_PROMPT, LAYOUTS[config.model_type]
    sizes = module_bytes(config, precision, layers)
    blocks = [size for module, size in sizes.items() if module.startswith(layout.blocks + ".")]
    total, last = sum(sizes.values()), sizes[layout.final_norm]
    first = total - sum(blocks) - last                                    # embeddings, rotary frequencies
    kept_rate, act_rate = per_token_bytes(config, precision, K)
    memory = device_memory(devices) if memory is None else memory
    unplanned = [m is None for m in memory]

    def fit(kind: str, n_tokens: int, block_list: list[int] = blocks, mem: list = memory) -> list[int] | None:
        """Blocks per device: "copies" (every block on each device) or "split"; None: no fit."""
        need = n_tokens * (kept_rate + act_rate) + RESERVE
        rooms = [float(total) if m is None else m - need for m in mem]    # the CPU: balanced by bytes
        if kind == "copies":
            whole = first + sum(block_list) + last
            return [len(block_list)] * len(mem) if all(room >= whole for room in rooms) else None
        return _split(first, block_list, last, rooms) if len(mem) > 1 else None

    default = token_budget(devices)
    budgets = [batch_tokens] if batch_tokens else [default >> k for k in range(8) if default >> k >= MIN_BATCH_TOKENS]
    wanted = placement if len(devices) > 1 else "single"
    tries = {"auto": [("copies", COPIES_FLOOR), ("split", 0)], "model_parallel": [("split", 0)]}.get(
        wanted, [("copies", 0)])
    chosen = next(((kind, B, counts) for kind, floor in tries for B in budgets
                   if (B >= floor or batch_tokens) and (counts := fit(kind, B)) is not None), None)
    kind, budget, counts = chosen or ("copies", budgets[-1], None)      # refused: even at the smallest budget
    kept, act = int(budget * kept_rate), int(budget * act_rate)
    plans, j = [], 0
    for k, device in enumerate(devices):
        held = list(range(j, j + counts[k])) if kind == "split" else list(range(len(blocks)))
        j += len(held) if kind == "split" else 0
        weights = total if kind == "copies" else sum(blocks[i] for i in held) + (first if k == 0 else 0) + (
            last if k == len(devices) - 1 else 0)
        plans.append(DevicePlan(device, memory[k], weights, kept, act, 0 if unplanned[k] else RESERVE, held))
    smallest = min((m for m in memory if m is not None), default=None)
    figures = (f"{gib(total)} of weights in {precision} ({len(blocks)} blocks) + {gib(kept)} of kept prefix states "
               f"+ {gib(act)} of activations at batch_tokens {budget} (prompts up to {K} tokens) + {gib(RESERVE)} "
               f"reserve = {gib(total + kept + act + RESERVE)}")
    common = dict(precision=precision, weights=total, batch_tokens=budget, prompt_tokens=K, devices=plans)
    if chosen is None:
        sentence = _refusal(name, figures, wanted, precision, memory, blocks, total, budget, fit)
        return Plan("refused", sentence, device_map=None, **common)
    if kind == "copies":
        reason = ("not planned: CPU memory is not asked" if all(unplanned) else
                  f"one copy per device: {figures}, within the {gib(smallest)} of the smallest device")
        return Plan("data_parallel" if wanted != "single" else "single", reason, device_map=None, **common)
    owner = {f"{layout.blocks}.{i}": plan for plan in plans for i in plan.blocks}
    device_map = {module: _target(owner.get(module, plans[-1] if module == layout.final_norm else plans[0]))
                  for module in sizes}
    why = ("config key placement is model_parallel" if wanted == "model_parallel" else
           f"one copy would need {figures}, more than the {gib(smallest)} of the smallest device")
    spread = ", ".join(f"{p.device}: blocks {p.blocks[0]}-{p.blocks[-1]}" if p.blocks else f"{p.device}: no block"
                       for p in plans)
    return Plan("model_parallel", f"the blocks split over {len(devices)} devices ({spread}): {why}",
                device_map=device_map, **common)


def _target(plan: DevicePlan) -> str | int:
    """accelerate's name of a device: "cpu", or a GPU's index."""
    return plan.device if plan.device == "cpu" else torch.device(plan.device).index


def _refusal(name, figures, wanted, precision, memory, blocks, total, budget, fit) -> str:
    """The one sentence: the model's size, the GPUs' memory, and what would fit instead (at `budget`,
    the smallest batch_tokens tried)."""
    n_devices, smallest = len(memory), min(m for m in memory if m is not None)
    options = ["placement auto (the blocks split over the GPUs fit)"] if (
        wanted == "data_parallel" and fit("split", budget)) else []
    if precision == "fp32":
        options.append(f"precision bf16 (half the weights: {gib(total // 2)})")
    more = next((n for n in range(n_devices + 1, 17) if fit("split", budget, mem=[smallest] * n)), None)
    if more:
        options.append(f"more GPUs per job (config key gpus_per_job: {more})")
    kinds = ("copies",) if wanted != "model_parallel" else ("split",)
    fewer = next((n for n in range(len(blocks) - 1, 0, -1)
                  if any(fit(kind, budget, blocks[:n]) for kind in kinds + ("split",) * (wanted == "auto"))), None)
    if fewer:
        options.append(f"fewer blocks (config key model.layers: {fewer} or less)")
    smaller = next((B for B in (budget >> k for k in range(1, 8)) if B >= MIN_BATCH_TOKENS and any(
        fit(kind, B) for kind in kinds + ("split",) * (wanted == "auto"))), None)
    if smaller:
        options.append(f"a smaller batch_tokens ({smaller})")
    how = "for one copy on each" if wanted != "model_parallel" and wanted != "auto" else (
        "even with the blocks split over them")
    return (f"{name} needs {figures}, and the job's {n_devices} GPU(s) offer "
            f"{', '.join(gib(m) for m in memory if m is not None)}, too little {how}; use "
            f"{', or '.join(options or ['GPUs with more memory'])}.")
