"""Optimizers for the study: Keras built-ins by name, plus ADOPT (Taniguchi et al., 2024)."""

from __future__ import annotations

import keras
from keras import ops

from braintumor_tf.config import OptimizerConfig


@keras.saving.register_keras_serializable(package="braintumor_tf")
class ADOPT(keras.optimizers.Optimizer):
    """ADOPT: Adam variant that converges for any ``beta_2`` (arXiv 2411.02853).

    It normalises the gradient by the *previous* second moment (so the current gradient
    cannot shrink its own step) and applies momentum after that normalisation. The very
    first update only initialises ``v = g**2``; the parameters do not move. Weight decay,
    if set, is the base class's decoupled (AdamW-style) decay.

    Args:
        clip_exponent: ``None`` follows the paper's algorithm; a number clips the
            normalised gradient to ``[-t**clip_exponent, t**clip_exponent]`` at step ``t``,
            as the authors' release does with ``0.25``. Clipping guards against near-zero
            first gradients, where ``g / max(sqrt(v), eps)`` can be enormous.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.9999,
        epsilon=1e-6,
        clip_exponent=None,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="adopt",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        if not 0.0 <= beta_1 < 1.0:
            raise ValueError(f"beta_1 must be in [0, 1), got {beta_1!r}")
        if not 0.0 <= beta_2 < 1.0:
            raise ValueError(f"beta_2 must be in [0, 1), got {beta_2!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        if clip_exponent is not None and not clip_exponent >= 0:
            raise ValueError(f"clip_exponent must be None or >= 0, got {clip_exponent!r}")
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.clip_exponent = clip_exponent

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]

        # self.iterations counts applied updates (0 on the first call), i.e. the paper's t.
        step = ops.cast(self.iterations, dtype)
        first = ops.equal(self.iterations, 0)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        grad_sq = ops.square(gradient)

        normed = ops.divide(gradient, ops.maximum(ops.sqrt(v), ops.cast(self.epsilon, dtype)))
        if self.clip_exponent is not None:
            bound = ops.power(step, ops.cast(self.clip_exponent, dtype))
            normed = ops.clip(normed, -bound, bound)
        m_new = ops.add(ops.multiply(beta_1, m), ops.multiply(1.0 - beta_1, normed))
        v_new = ops.add(ops.multiply(beta_2, v), ops.multiply(1.0 - beta_2, grad_sq))

        # Branch-free so it traces once; `where` (not multiply-by-mask) keeps a huge
        # first-step ratio from leaking into the result as inf * 0 = nan.
        self.assign(m, ops.where(first, m, m_new))
        self.assign_sub(variable, ops.where(first, ops.zeros_like(m_new), lr * m_new))
        self.assign(v, ops.where(first, grad_sq, v_new))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "clip_exponent": self.clip_exponent,
            }
        )
        return config


# The authors' release clips by t**0.25; without it a zero first gradient (dead ReLU,
# unused class) divides by epsilon and throws that weight far away on the next step.
ADOPT_CLIP_EXPONENT = 0.25


def make_optimizer(optimizer_config: OptimizerConfig, learning_rate=None):
    """Build the configured optimizer around ``learning_rate`` (a float or a schedule).

    ``learning_rate=None`` uses ``optimizer_config.learning_rate``. Only ``adamw`` and
    ``adopt`` use ``weight_decay`` (decoupled); ``momentum`` only applies to ``sgd``.
    """
    cfg = optimizer_config
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    common = {"learning_rate": lr, "clipnorm": cfg.clipnorm}
    decay = cfg.weight_decay if cfg.weight_decay > 0 else None
    name = cfg.name
    if name == "adam":
        return keras.optimizers.Adam(beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon,
                                     **common)
    if name == "adamw":
        return keras.optimizers.AdamW(weight_decay=cfg.weight_decay, beta_1=cfg.beta_1,
                                      beta_2=cfg.beta_2, epsilon=cfg.epsilon, **common)
    if name == "sgd":
        return keras.optimizers.SGD(momentum=cfg.momentum, nesterov=False, **common)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(epsilon=cfg.epsilon, **common)
    if name == "adopt":
        return ADOPT(beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon,
                     clip_exponent=ADOPT_CLIP_EXPONENT, weight_decay=decay, **common)
    raise ValueError(f"unknown optimizer name {name!r}; expected one of "
                     "'adam', 'adamw', 'sgd', 'rmsprop', 'adopt'")
