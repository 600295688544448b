"""One Vision Transformer, written the way each library's users write it.

Shared by ``compile_time`` and ``vit_throughput``. Every contender computes the same function of
the same weights: timm's ViT (pre-norm blocks, a cls token, learned positions, exact GELU,
LayerNorm eps 1e-6), with the patch embedding written as patchify + Linear (the same map as
timm's stride-``p`` convolution, whose weight is this Linear's reshaped). Weights come from
`init_weights` under timm's names (``blocks.0.attn.qkv.weight``) and load into each library, so
a smoke test can check that all contenders agree on the loss.

Attention is ``jax.nn.dot_product_attention`` in every JAX contender (``implementation="cudnn"``
on a GPU with bfloat16 compute) and ``F.scaled_dot_product_attention`` in PyTorch. cuDNN refuses
odd sequence lengths in training, so JAX contenders pad the tokens (197 for ViT-B/16) to a
multiple of ``Config.pad_to`` and pass the true length as ``key_value_seq_lengths``: padded keys
are masked out, padded rows never reach the loss, so the result is exact. PyTorch's kernels take
the 197 tokens as they are.

Mixed precision everywhere means float32 parameters and optimizer state, ``compute`` dtype
(bfloat16) matmuls and attention, LayerNorm statistics in float32, loss in float32: JAX
contenders cast the parameters inside the loss (so gradients arrive in float32), NNX layers do it
themselves (``dtype=``, ``param_dtype=``), PyTorch uses ``torch.autocast``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp
from jparam import nn

LR, WEIGHT_DECAY, BETAS, EPS = 1e-4, 0.05, (0.9, 0.999), 1e-8


@dataclasses.dataclass(frozen=True)
class Config:
    """A ViT's shape; the defaults are ViT-B/16 at 224x224 with 1,000 classes."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    num_classes: int = 1000
    eps: float = 1e-6
    pad_to: int = 2  # JAX contenders pad the tokens to a multiple of this (cuDNN wants even)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        return self.num_patches + 1

    @property
    def padded_tokens(self) -> int:
        return -(-self.tokens // self.pad_to) * self.pad_to

    @property
    def patch_dim(self) -> int:
        return self.in_chans * self.patch_size**2

    @property
    def hidden(self) -> int:
        return self.mlp_ratio * self.dim


BASE = Config()
TINY = Config(image_size=32, patch_size=8, dim=64, depth=2, heads=4, num_classes=10)


def num_params(cfg: Config) -> int:
    """Parameters of the ViT (86,567,656 for ViT-B/16, as timm's ``vit_base_patch16_224``)."""
    d, h = cfg.dim, cfg.hidden
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (h * d + h) + (d * h + d)
    embed = cfg.patch_dim * d + d + d + cfg.tokens * d
    return embed + cfg.depth * block + 2 * d + cfg.num_classes * d + cfg.num_classes


def train_flops_per_image(cfg: Config) -> int:
    """FLOPs of one training step per image: ``6 * matmul params * tokens + 12 * L * T^2 * D``.

    A matmul weight costs 2 FLOPs per token forward and 4 backward; blocks see all ``T`` true
    tokens (padding is not counted), the patch embedding ``T - 1`` and the head one. Attention
    adds ``Q K^T`` and ``A V``, ``2 * T^2 * D`` FLOPs each per layer forward, times 3 with
    backward. Norms, GELU, softmax and the optimizer are left out, as is usual for MFU.
    """
    d, t = cfg.dim, cfg.tokens
    block_matmul = 3 * d * d + d * d + 2 * cfg.hidden * d
    matmul_token_params = (
        cfg.depth * block_matmul * t + cfg.patch_dim * d * (t - 1) + d * cfg.num_classes
    )
    return 6 * matmul_token_params + 12 * cfg.depth * t * t * d


def init_weights(cfg: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under timm's names (values do not matter for speed).

    Every array gets distinct random values, biases and norms included, so a contender that
    mixes two of them up disagrees with the others on the loss.
    """
    rng = np.random.default_rng(seed)

    def normal(*shape: int, mean: float = 0.0) -> np.ndarray:
        return (mean + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    d, h = cfg.dim, cfg.hidden
    w = {
        "patch_embed.weight": normal(d, cfg.patch_dim),
        "patch_embed.bias": normal(d),
        "cls_token": normal(1, 1, d),
        "pos_embed": normal(1, cfg.tokens, d),
    }
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        w |= {
            p + "norm1.weight": normal(d, mean=1.0),
            p + "norm1.bias": normal(d),
            p + "attn.qkv.weight": normal(3 * d, d),
            p + "attn.qkv.bias": normal(3 * d),
            p + "attn.proj.weight": normal(d, d),
            p + "attn.proj.bias": normal(d),
            p + "norm2.weight": normal(d, mean=1.0),
            p + "norm2.bias": normal(d),
            p + "mlp.fc1.weight": normal(h, d),
            p + "mlp.fc1.bias": normal(h),
            p + "mlp.fc2.weight": normal(d, h),
            p + "mlp.fc2.bias": normal(d),
        }
    w |= {
        "norm.weight": normal(d, mean=1.0),
        "norm.bias": normal(d),
        "head.weight": normal(cfg.num_classes, d),
        "head.bias": normal(cfg.num_classes),
    }
    return w


BLOCK_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)


def stack_blocks(weights: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
    """``blocks.{i}.X`` for every ``i`` -> ``blocks.X`` with a leading layer axis."""
    out = {k: v for k, v in weights.items() if not k.startswith("blocks.")}
    for sub in BLOCK_KEYS:
        out[f"blocks.{sub}"] = np.stack([weights[f"blocks.{i}.{sub}"] for i in range(depth)])
    return out


def batch(cfg: Config, batch_size: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 images ``(B, C, H, W)`` and int32 labels."""
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    images = rng.standard_normal((batch_size, cfg.in_chans, s, s), dtype=np.float32)
    labels = rng.integers(0, cfg.num_classes, batch_size).astype(np.int32)
    return images, labels


# -- pieces shared by the JAX contenders ---------------------------------------------------------


def attention_impl(requested: str, compute: Any) -> str | None:
    """``"auto"``: cuDNN's fused kernel on a GPU with 16-bit compute, else XLA's."""
    if requested != "auto":
        return requested
    gpu = jax.default_backend() == "gpu"
    return "cudnn" if gpu and jnp.dtype(compute).itemsize == 2 else "xla"


def patchify(images: jax.Array, p: int) -> jax.Array:
    """``(B, C, H, W)`` -> ``(B, N, C * p * p)``, patches in row-major order (timm's)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def pad_tokens(x: jax.Array, cfg: Config) -> jax.Array:
    """Zero-pads the token axis (``-2``) to ``cfg.padded_tokens``."""
    extra = cfg.padded_tokens - cfg.tokens
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[-2] = (0, extra)
    return jnp.pad(x, widths)


def attention(qkv: jax.Array, cfg: Config, impl: str | None) -> jax.Array:
    """``(B, T, 3 * D)`` fused projections -> ``(B, T, D)`` attention output, padding masked."""
    b, t, _ = qkv.shape
    q, k, v = jnp.unstack(qkv.reshape(b, t, 3, cfg.heads, cfg.dim // cfg.heads), axis=2)
    lengths = None
    if t != cfg.tokens:
        lengths = jnp.full((b,), cfg.tokens, jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=impl)
    return out.reshape(b, t, cfg.dim)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating array of a pytree cast to ``dtype`` (mixed precision's parameter cast)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    ).mean()


def adamw() -> optax.GradientTransformation:
    return optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


# A contender: build(cfg, weights, scan, compute, impl) -> (step, state); step(state, x, y)
# returns (state, loss). `state` holds everything the step updates.
Build = Callable[..., tuple[Callable[..., Any], Any]]


# -- raw JAX: a flat dict of arrays --------------------------------------------------------------


def _layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps) * w + b).astype(x.dtype)


def _raw_block(p: dict[str, jax.Array], x: jax.Array, cfg: Config, impl: str | None) -> jax.Array:
    h = _layer_norm(x, p["norm1.weight"], p["norm1.bias"], cfg.eps)
    h = attention(h @ p["attn.qkv.weight"].T + p["attn.qkv.bias"], cfg, impl)
    x = x + (h @ p["attn.proj.weight"].T + p["attn.proj.bias"])
    h = _layer_norm(x, p["norm2.weight"], p["norm2.bias"], cfg.eps)
    h = gelu(h @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"])
    return x + (h @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"])


def raw_forward(
    p: dict[str, jax.Array], images: jax.Array, cfg: Config, scan: bool, impl: str | None
) -> jax.Array:
    """Logits of the functional ViT on a flat ``{name: array}`` dict."""
    x = patchify(images, cfg.patch_size) @ p["patch_embed.weight"].T + p["patch_embed.bias"]
    cls = jnp.broadcast_to(p["cls_token"], (x.shape[0], 1, cfg.dim))
    x = pad_tokens(jnp.concatenate([cls, x], axis=1) + p["pos_embed"], cfg)
    if scan:
        stacked = {k: p[f"blocks.{k}"] for k in BLOCK_KEYS}
        x, _ = jax.lax.scan(lambda x, bp: (_raw_block(bp, x, cfg, impl), None), x, stacked)
    else:
        for i in range(cfg.depth):
            x = _raw_block({k: p[f"blocks.{i}.{k}"] for k in BLOCK_KEYS}, x, cfg, impl)
    x = _layer_norm(x[:, 0], p["norm.weight"], p["norm.bias"], cfg.eps)
    return x @ p["head.weight"].T + p["head.bias"]


def build_raw(cfg: Config, weights: dict, scan: bool, compute: Any, impl: str | None):
    params = {
        k: jnp.asarray(v)
        for k, v in (stack_blocks(weights, cfg.depth) if scan else weights).items()
    }
    tx = adamw()

    def loss_fn(params, images, labels):
        logits = raw_forward(cast_floats(params, compute), images.astype(compute), cfg, scan, impl)
        return cross_entropy(logits, labels)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, images, labels):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step, (params, tx.init(params))


# -- jparam --------------------------------------------------------------------------------------


class Attention(jp.Module):
    qkv: nn.Linear
    proj: nn.Linear
    cfg: Config = jp.field(static=True)
    impl: str | None = jp.field(static=True)

    def __init__(self, cfg: Config, impl: str | None, *, key: jax.Array) -> None:
        k_qkv, k_proj = jax.random.split(key)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, key=k_qkv)
        self.proj = nn.Linear(cfg.dim, cfg.dim, key=k_proj)
        self.cfg, self.impl = cfg, impl

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(attention(self.qkv(x), self.cfg, self.impl))


class Mlp(jp.Module):
    fc1: nn.Linear
    fc2: nn.Linear

    def __init__(self, cfg: Config, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden, key=k1)
        self.fc2 = nn.Linear(cfg.hidden, cfg.dim, key=k2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


class Block(jp.Module):
    norm1: nn.LayerNorm
    attn: Attention
    norm2: nn.LayerNorm
    mlp: Mlp

    def __init__(self, cfg: Config, impl: str | None, *, key: jax.Array) -> None:
        k_attn, k_mlp = jax.random.split(key)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg, impl, key=k_attn)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = Mlp(cfg, key=k_mlp)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(jp.Module):
    patch_embed: nn.Linear
    cls_token: jp.Parameter
    pos_embed: jp.Parameter
    blocks: Any  # tuple[Block, ...] or nn.Stacked
    norm: nn.LayerNorm
    head: nn.Linear
    cfg: Config = jp.field(static=True)

    def __init__(self, cfg: Config, impl: str | None, *, key: jax.Array) -> None:
        k_patch, k_cls, k_pos, k_head, *k_blocks = jax.random.split(key, 4 + cfg.depth)
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim, key=k_patch)
        self.cls_token = jp.Parameter(jp.init.normal(k_cls, (1, 1, cfg.dim), std=0.02))
        self.pos_embed = jp.Parameter(jp.init.normal(k_pos, (1, cfg.tokens, cfg.dim), std=0.02))
        self.blocks = tuple(Block(cfg, impl, key=k) for k in k_blocks)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes, key=k_head)
        self.cfg = cfg

    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.cfg
        x = self.patch_embed(patchify(images, cfg.patch_size))
        cls = jnp.broadcast_to(self.cls_token.value, (x.shape[0], 1, cfg.dim))
        x = pad_tokens(jnp.concatenate([cls, x], axis=1) + self.pos_embed.value, cfg)
        if isinstance(self.blocks, tuple):
            for block in self.blocks:
                x = block(x)
        else:
            x = self.blocks(x)
        return self.head(self.norm(x[:, 0]))


def jparam_model(cfg: Config, weights: dict, scan: bool, impl: str | None) -> ViT:
    """The jparam ViT holding ``weights``: built abstractly, then loaded by name."""
    abstract = jax.eval_shape(lambda k: ViT(cfg, impl, key=k), jax.random.key(0))
    model = abstract.load_state_dict(weights)
    if scan:
        model = model.replace(blocks=nn.Stacked.from_layers(model.blocks))
    return model


def build_jparam(cfg: Config, weights: dict, scan: bool, compute: Any, impl: str | None):
    model = jparam_model(cfg, weights, scan, impl)

    def loss_fn(model, images, labels):
        return cross_entropy(model.astype(compute)(images.astype(compute)), labels)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, images, labels):
        model, opt = state
        loss, grads = jp.value_and_grad(loss_fn)(model, images, labels)
        model, opt = opt.update(model, grads)
        return (model, opt), loss

    return step, (model, jp.Optimizer(adamw(), model))


# -- Flax NNX ------------------------------------------------------------------------------------


@functools.cache
def _nnx_classes() -> dict[str, type]:
    from flax import nnx

    def linear(i: int, o: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(i, o, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def layer_norm(cfg: Config, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
        return nnx.LayerNorm(
            cfg.dim, epsilon=cfg.eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
        )

    class NAttention(nnx.Module):
        def __init__(self, cfg: Config, impl: str | None, dtype: Any, rngs: nnx.Rngs):
            self.qkv = linear(cfg.dim, 3 * cfg.dim, dtype, rngs)
            self.proj = linear(cfg.dim, cfg.dim, dtype, rngs)
            self.cfg, self.impl = cfg, impl

        def __call__(self, x):
            return self.proj(attention(self.qkv(x), self.cfg, self.impl))

    class NMlp(nnx.Module):
        def __init__(self, cfg: Config, dtype: Any, rngs: nnx.Rngs):
            self.fc1 = linear(cfg.dim, cfg.hidden, dtype, rngs)
            self.fc2 = linear(cfg.hidden, cfg.dim, dtype, rngs)

        def __call__(self, x):
            return self.fc2(gelu(self.fc1(x)))

    class NBlock(nnx.Module):
        def __init__(self, cfg: Config, impl: str | None, dtype: Any, rngs: nnx.Rngs):
            self.norm1 = layer_norm(cfg, dtype, rngs)
            self.attn = NAttention(cfg, impl, dtype, rngs)
            self.norm2 = layer_norm(cfg, dtype, rngs)
            self.mlp = NMlp(cfg, dtype, rngs)

        def __call__(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class NViT(nnx.Module):
        def __init__(self, cfg: Config, impl: str | None, dtype: Any, scan: bool, rngs):
            self.patch_embed = linear(cfg.patch_dim, cfg.dim, dtype, rngs)
            self.cls_token = nnx.Param(jnp.zeros((1, 1, cfg.dim)))
            self.pos_embed = nnx.Param(jnp.zeros((1, cfg.tokens, cfg.dim)))
            if scan:  # Flax's scan-over-layers recipe: vmapped init, nnx.scan in the call

                @nnx.split_rngs(splits=cfg.depth)
                @nnx.vmap(in_axes=(0,), out_axes=0)
                def make_blocks(rngs):
                    return NBlock(cfg, impl, dtype, rngs)

                self.blocks = make_blocks(rngs)
            else:
                self.blocks = nnx.List([NBlock(cfg, impl, dtype, rngs) for _ in range(cfg.depth)])
            self.norm = layer_norm(cfg, dtype, rngs)
            self.head = linear(cfg.dim, cfg.num_classes, dtype, rngs)
            self.cfg, self.dtype, self.scan = cfg, dtype, scan

        def __call__(self, images):
            cfg, dtype = self.cfg, self.dtype
            x = self.patch_embed(patchify(images, cfg.patch_size))
            cls = jnp.broadcast_to(self.cls_token[...].astype(dtype), (x.shape[0], 1, cfg.dim))
            x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(dtype)
            x = pad_tokens(x, cfg)
            if self.scan:

                @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
                def forward(x, block):
                    return block(x)

                x = forward(x, self.blocks)
            else:
                for block in self.blocks:
                    x = block(x)
            return self.head(self.norm(x[:, 0]))

    return {"NViT": NViT}


def nnx_model(cfg: Config, weights: dict, scan: bool, compute: Any, impl: str | None):
    """The NNX ViT holding ``weights`` (kernels are ``(in, out)``, LayerNorm's weight ``scale``)."""
    from flax import nnx

    model = _nnx_classes()["NViT"](cfg, impl, compute, scan, nnx.Rngs(0))
    named = stack_blocks(weights, cfg.depth) if scan else weights
    loaded = 0
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Param):
            continue
        *parents, leaf = (str(k) for k in path)
        value = named[".".join([*parents, {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])]
        if leaf == "kernel":
            value = np.swapaxes(value, -1, -2)
        if value.shape != node[...].shape:
            raise ValueError(f"nnx {'.'.join(map(str, path))}: {value.shape} != {node[...].shape}")
        node[...] = jnp.asarray(value)
        loaded += 1
    if loaded != len(named):
        raise ValueError(f"nnx: loaded {loaded} of {len(named)} weights")
    return model


def build_nnx(cfg: Config, weights: dict, scan: bool, compute: Any, impl: str | None):
    from flax import nnx

    model = nnx_model(cfg, weights, scan, compute, impl)
    opt = nnx.Optimizer(model, adamw(), wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def nnx_step(model, opt, images, labels):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(images), labels))(model)
        opt.update(model, grads)
        return loss

    def step(state, images, labels):
        return state, nnx_step(*state, images, labels)

    return step, (model, opt)


# -- Equinox -------------------------------------------------------------------------------------


@functools.cache
def _equinox_classes() -> dict[str, type]:
    import equinox as eqx

    def per_token(layer: Callable, x: jax.Array) -> jax.Array:
        return jax.vmap(layer)(x)

    class EAttention(eqx.Module):
        qkv: eqx.nn.Linear
        proj: eqx.nn.Linear
        cfg: Config = eqx.field(static=True)
        impl: str | None = eqx.field(static=True)

        def __init__(self, cfg: Config, impl: str | None, key: jax.Array):
            k_qkv, k_proj = jax.random.split(key)
            self.qkv = eqx.nn.Linear(cfg.dim, 3 * cfg.dim, key=k_qkv)
            self.proj = eqx.nn.Linear(cfg.dim, cfg.dim, key=k_proj)
            self.cfg, self.impl = cfg, impl

        def __call__(self, x):  # one example: (T, D); attention wants a batch axis
            out = attention(per_token(self.qkv, x)[None], self.cfg, self.impl)[0]
            return per_token(self.proj, out)

    class EMlp(eqx.Module):
        fc1: eqx.nn.Linear
        fc2: eqx.nn.Linear

        def __init__(self, cfg: Config, key: jax.Array):
            k1, k2 = jax.random.split(key)
            self.fc1 = eqx.nn.Linear(cfg.dim, cfg.hidden, key=k1)
            self.fc2 = eqx.nn.Linear(cfg.hidden, cfg.dim, key=k2)

        def __call__(self, x):
            return per_token(self.fc2, gelu(per_token(self.fc1, x)))

    class EBlock(eqx.Module):
        norm1: eqx.nn.LayerNorm
        attn: EAttention
        norm2: eqx.nn.LayerNorm
        mlp: EMlp

        def __init__(self, cfg: Config, impl: str | None, key: jax.Array):
            k_attn, k_mlp = jax.random.split(key)
            self.norm1 = eqx.nn.LayerNorm(cfg.dim, eps=cfg.eps)
            self.attn = EAttention(cfg, impl, k_attn)
            self.norm2 = eqx.nn.LayerNorm(cfg.dim, eps=cfg.eps)
            self.mlp = EMlp(cfg, k_mlp)

        def __call__(self, x):
            x = x + self.attn(per_token(self.norm1, x))
            return x + self.mlp(per_token(self.norm2, x))

    class EViT(eqx.Module):
        patch_embed: eqx.nn.Linear
        cls_token: jax.Array
        pos_embed: jax.Array
        blocks: Any  # tuple of EBlock, or one EBlock whose arrays have a layer axis
        norm: eqx.nn.LayerNorm
        head: eqx.nn.Linear
        cfg: Config = eqx.field(static=True)
        scan: bool = eqx.field(static=True)

        def __init__(self, cfg: Config, impl: str | None, scan: bool, key: jax.Array):
            k_patch, k_head, k_blocks = jax.random.split(key, 3)
            self.patch_embed = eqx.nn.Linear(cfg.patch_dim, cfg.dim, key=k_patch)
            self.cls_token = jnp.zeros((1, 1, cfg.dim))
            self.pos_embed = jnp.zeros((1, cfg.tokens, cfg.dim))
            keys = jax.random.split(k_blocks, cfg.depth)
            if scan:  # Equinox's scan-over-layers recipe: filter_vmap init, scan over arrays
                self.blocks = eqx.filter_vmap(lambda k: EBlock(cfg, impl, k))(keys)
            else:
                self.blocks = tuple(EBlock(cfg, impl, k) for k in keys)
            self.norm = eqx.nn.LayerNorm(cfg.dim, eps=cfg.eps)
            self.head = eqx.nn.Linear(cfg.dim, cfg.num_classes, key=k_head)
            self.cfg, self.scan = cfg, scan

        def __call__(self, image):  # one example: (C, H, W)
            cfg = self.cfg
            x = per_token(self.patch_embed, patchify(image[None], cfg.patch_size)[0])
            x = jnp.concatenate([self.cls_token[0], x], axis=0) + self.pos_embed[0]
            x = pad_tokens(x, cfg)
            if self.scan:
                arrays, static = eqx.partition(self.blocks, eqx.is_array)
                x, _ = jax.lax.scan(lambda x, a: (eqx.combine(a, static)(x), None), x, arrays)
            else:
                for block in self.blocks:
                    x = block(x)
            return self.head(self.norm(x[0]))

    return {"EViT": EViT}


def _key_name(key: Any) -> str:
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    raise TypeError(f"unexpected pytree key {key!r}")


def equinox_model(cfg: Config, weights: dict, scan: bool, impl: str | None):
    """The Equinox ViT holding ``weights`` (Equinox's Linear is ``(out, in)`` like PyTorch's)."""
    model = _equinox_classes()["EViT"](cfg, impl, scan, jax.random.key(0))
    named = stack_blocks(weights, cfg.depth) if scan else weights
    used: set[str] = set()

    def load(path: tuple, leaf: jax.Array) -> jax.Array:
        name = ".".join(_key_name(k) for k in path)
        value = named[name]
        if value.shape != leaf.shape:
            raise ValueError(f"equinox {name}: {value.shape} != {leaf.shape}")
        used.add(name)
        return jnp.asarray(value)

    model = jax.tree_util.tree_map_with_path(load, model)
    if used != set(named):
        raise ValueError(f"equinox: not loaded: {sorted(set(named) - used)}")
    return model


def build_equinox(cfg: Config, weights: dict, scan: bool, compute: Any, impl: str | None):
    import equinox as eqx

    model = equinox_model(cfg, weights, scan, impl)
    tx = adamw()

    def loss_fn(model, images, labels):
        logits = jax.vmap(cast_floats(model, compute))(images.astype(compute))
        return cross_entropy(logits, labels)

    # The batch goes first so that "all-except-first" donates the model and optimizer only.
    @eqx.filter_jit(donate="all-except-first")
    def eqx_step(data, model, opt_state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, *data)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    def step(state, images, labels):
        model, opt_state, loss = eqx_step((images, labels), *state)
        return (model, opt_state), loss

    return step, (model, tx.init(eqx.filter(model, eqx.is_array)))


# -- PyTorch -------------------------------------------------------------------------------------


@functools.cache
def _torch_classes() -> dict[str, type]:
    import torch
    import torch.nn.functional as F

    class TAttention(torch.nn.Module):
        def __init__(self, cfg: Config):
            super().__init__()
            self.qkv = torch.nn.Linear(cfg.dim, 3 * cfg.dim)
            self.proj = torch.nn.Linear(cfg.dim, cfg.dim)
            self.heads = cfg.heads

        def forward(self, x):
            b, t, d = x.shape
            qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(b, t, d))

    class TMlp(torch.nn.Module):
        def __init__(self, cfg: Config):
            super().__init__()
            self.fc1 = torch.nn.Linear(cfg.dim, cfg.hidden)
            self.fc2 = torch.nn.Linear(cfg.hidden, cfg.dim)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class TBlock(torch.nn.Module):
        def __init__(self, cfg: Config):
            super().__init__()
            self.norm1 = torch.nn.LayerNorm(cfg.dim, eps=cfg.eps)
            self.attn = TAttention(cfg)
            self.norm2 = torch.nn.LayerNorm(cfg.dim, eps=cfg.eps)
            self.mlp = TMlp(cfg)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class TViT(torch.nn.Module):
        def __init__(self, cfg: Config):
            super().__init__()
            self.cfg = cfg
            self.patch_embed = torch.nn.Linear(cfg.patch_dim, cfg.dim)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, cfg.dim))
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
            self.blocks = torch.nn.ModuleList(TBlock(cfg) for _ in range(cfg.depth))
            self.norm = torch.nn.LayerNorm(cfg.dim, eps=cfg.eps)
            self.head = torch.nn.Linear(cfg.dim, cfg.num_classes)

        def forward(self, images):
            b, c, h, w = images.shape
            p = self.cfg.patch_size
            x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
            x = self.patch_embed(x.reshape(b, (h // p) * (w // p), c * p * p))
            x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
            x = x + self.pos_embed
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x[:, 0]))

    return {"TViT": TViT}


class TorchLoss:
    """A PyTorch loss that `jax.block_until_ready` can wait on (it synchronises the device)."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def block_until_ready(self) -> TorchLoss:
        import torch

        if self.loss.is_cuda:
            torch.cuda.synchronize(self.loss.device)
        return self

    def __float__(self) -> float:
        return float(self.loss.item())


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_torch(cfg: Config, weights: dict, compile: bool, compute: Any):
    """PyTorch's ViT with AdamW (fused on CUDA) and ``torch.autocast`` for 16-bit compute."""
    import torch
    import torch.nn.functional as F

    device = torch_device()
    model = _torch_classes()["TViT"](cfg)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    model = model.to(device)
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=LR,
        betas=BETAS,
        eps=EPS,
        weight_decay=WEIGHT_DECAY,
        fused=device == "cuda",
    )
    autocast_dtype = {
        jnp.dtype(jnp.bfloat16): torch.bfloat16,
        jnp.dtype(jnp.float16): torch.float16,
    }
    amp = autocast_dtype.get(jnp.dtype(compute))

    def step(state, images, labels):
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return state, TorchLoss(loss.detach())

    return step, None


def torch_batch(images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
    import torch

    device = torch_device()
    return torch.from_numpy(images).to(device), torch.from_numpy(labels).long().to(device)


def missing_package(kind: str) -> str | None:
    """The package a contender (``"nnx"``, ``"equinox"``, ``"torch"``...) needs and lacks."""
    package = {"nnx": "flax", "equinox": "equinox", "torch": "torch"}.get(kind.split(".")[0])
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except ImportError:
        return package
    return None


JAX_BUILDERS: dict[str, Build] = {
    "raw": build_raw,
    "jparam": build_jparam,
    "nnx": build_nnx,
    "equinox": build_equinox,
}
