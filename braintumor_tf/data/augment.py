"""Label-preserving augmentation run on batches inside tf.data: Keras random layers for
classification, one shared geometric transform for image/mask pairs in segmentation."""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from braintumor_tf.config import JointAugmentConfig


def make_augmenter(augment_config, seed: int = 0) -> keras.Sequential | None:
    """Batch-wise Keras random layers in float32 (whatever the model policy); ``None`` if all off."""
    steps = []
    mode = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((augment_config.horizontal_flip,
                                            augment_config.vertical_flip))
    if mode:
        steps.append(keras.layers.RandomFlip(mode, seed=seed, dtype="float32"))
    if augment_config.rotation:
        steps.append(keras.layers.RandomRotation(augment_config.rotation, fill_mode="constant",
                                                 seed=seed + 1, dtype="float32"))
    if augment_config.zoom:
        steps.append(keras.layers.RandomZoom(augment_config.zoom, fill_mode="constant",
                                             seed=seed + 2, dtype="float32"))
    if augment_config.translation:
        steps.append(keras.layers.RandomTranslation(
            augment_config.translation, augment_config.translation, fill_mode="constant",
            seed=seed + 3, dtype="float32"))
    if augment_config.contrast:
        steps.append(keras.layers.RandomContrast(augment_config.contrast, value_range=(0, 255),
                                                 seed=seed + 4, dtype="float32"))
    if augment_config.brightness:
        steps.append(keras.layers.RandomBrightness(augment_config.brightness,
                                                   value_range=(0, 255), seed=seed + 5, dtype="float32"))
    if not steps:
        return None
    return keras.Sequential(steps, name="augment")


# ----------------------------------------------------------------------------- segmentation


@dataclasses.dataclass(frozen=True)
class JointAugmentParams(JointAugmentConfig):
    """The config's fields (one definition, validated there) plus what the augmenter derives.

    Geometric fields move image and mask together; intensity fields touch the image only.
    """

    @classmethod
    def from_config(cls, config) -> JointAugmentParams:
        """Any config-like object (AugmentConfig, a dict): absent fields keep their default."""
        get = config.get if isinstance(config, dict) else lambda k, d: getattr(config, k, d)
        return cls(**{f.name: get(f.name, f.default) for f in dataclasses.fields(cls)})

    @property
    def geometric(self) -> bool:
        return bool(self.horizontal_flip or self.vertical_flip or self.rotate90 or self.rotation
                    or self.zoom or self.translation)

    @property
    def intensity(self) -> bool:
        return bool(self.contrast or self.brightness or self.gamma or self.noise)


def _inverse_transforms(params: JointAugmentParams, seeds, batch, height, width):
    """[B, 8] projective rows mapping each output pixel to the input pixel it samples.

    Built as one matrix per example (dihedral part, then rotation/zoom about the centre, then a
    shift), so the image and the mask are resampled through exactly the same map.
    """
    def uniform(k, low=0.0, high=1.0):
        return tf.random.stateless_uniform([batch], seeds[k], low, high)

    zeros, ones = tf.zeros([batch]), tf.ones([batch])
    flip_x = tf.where(uniform(0) < 0.5, -ones, ones) if params.horizontal_flip else ones
    flip_y = tf.where(uniform(1) < 0.5, -ones, ones) if params.vertical_flip else ones
    quarter = (tf.floor(uniform(2, 0.0, 4.0)) if params.rotate90 else zeros) * (math.pi / 2)
    angle = quarter + (uniform(3, -1.0, 1.0) * params.rotation * 2 * math.pi if params.rotation
                       else zeros)
    scale = (1.0 + uniform(4, -1.0, 1.0) * params.zoom) if params.zoom else ones  # > 1 zooms in
    shift_x = uniform(5, -1.0, 1.0) * params.translation * width if params.translation else zeros
    shift_y = uniform(6, -1.0, 1.0) * params.translation * height if params.translation else zeros
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # input - centre = F @ R @ (output - centre - shift), F = diag(flip_x, flip_y).
    a0, a1 = flip_x * cos, -flip_x * sin
    b0, b1 = flip_y * sin, flip_y * cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    ox, oy = -cx - shift_x, -cy - shift_y
    a2 = a0 * ox + a1 * oy + cx
    b2 = b0 * ox + b1 * oy + cy
    # Rounding keeps pure flips/quarter turns exact, so the image is not blurred by them.
    rows = [a0, a1, a2, b0, b1, b2]
    rows = [tf.where(tf.abs(r - tf.round(r)) < 1e-4, tf.round(r), r) for r in rows]
    return tf.stack(rows + [zeros, zeros], axis=1)


def _warp(images, transforms, interpolation: str):
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3],
        fill_value=tf.constant(0.0, images.dtype), interpolation=interpolation,
        fill_mode="CONSTANT")


def _intensity(params: JointAugmentParams, images, seeds, batch):
    def uniform(k, low, high):
        return tf.random.stateless_uniform([batch, 1, 1, 1], seeds[k], low, high)

    if params.gamma:
        exponent = tf.exp(uniform(7, -params.gamma, params.gamma))
        images = 255.0 * tf.pow(tf.clip_by_value(images / 255.0, 0.0, 1.0), exponent)
    if params.contrast:
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * uniform(8, 1.0 - params.contrast, 1.0 + params.contrast) + mean
    if params.brightness:
        images = images + 255.0 * uniform(9, -params.brightness, params.brightness)
    if params.noise:
        sigma = 255.0 * uniform(10, 0.0, params.noise)
        images = images + sigma * tf.random.stateless_normal(tf.shape(images), seeds[11])
    return tf.clip_by_value(images, 0.0, 255.0)


def augment_image_and_mask(image, mask, seed, params: JointAugmentParams):
    """One random draw per example, applied to image (bilinear) and mask (nearest) alike.

    Works on single examples ([H, W, C] / [H, W, 1]) or batches, eagerly or inside tf.data.map.
    ``seed`` is a stateless seed (shape [2] integers), so a pipeline that zips in
    ``tf.data.Dataset.random`` is reproducible whatever its parallelism. Image values are
    0..255 float; the mask comes back float32 0/1 (``mask=None``: images only, and ``None``
    back). Square inputs assumed for quarter turns (a non-square image would be cropped by them).
    """
    image = tf.convert_to_tensor(image)
    single = image.shape.rank == 3
    if single:
        image = image[None]
    image = tf.cast(image, tf.float32)
    if mask is not None:
        mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)
        mask = mask[None] if single else mask
    seeds = tf.unstack(tf.random.experimental.stateless_split(
        tf.cast(seed, tf.int64), num=12), axis=0)
    batch = tf.shape(image)[0]
    if params.geometric:
        shape = tf.shape(image)
        transforms = _inverse_transforms(params, seeds, batch, tf.cast(shape[1], tf.float32),
                                         tf.cast(shape[2], tf.float32))
        image = _warp(image, transforms, "BILINEAR")
        if mask is not None:
            mask = _warp(mask, transforms, "NEAREST")
    if params.intensity:
        image = _intensity(params, image, seeds, batch)
    if mask is not None:
        mask = tf.cast(mask > 0.5, tf.float32)
        mask = mask[0] if single else mask
    return (image[0] if single else image), mask


def make_joint_augmenter(params, seed: int = 0):
    """``fn(image, mask, element_seed) -> (image, mask)`` for tf.data, or None if all off.

    ``params`` may be a JointAugmentParams or any config-like object; ``seed`` is folded into
    every element seed so two runs with different seeds see different augmentations.
    """
    if not isinstance(params, JointAugmentParams):
        params = JointAugmentParams.from_config(params)
    if not (params.geometric or params.intensity):
        return None

    def augment(image, mask, element_seed):
        element_seed = tf.cast(element_seed, tf.int64) + tf.constant([0, seed], tf.int64)
        return augment_image_and_mask(image, mask, element_seed, params)

    return augment


def make_tumour_crop(crop_size: int, tumour_fraction: float = 0.7, seed: int = 0):
    """``fn(images, masks, batch_seed) -> (images, masks)`` cutting a ``crop_size`` square out of
    every [B, S, S, C] image of a batch and the same square of its mask.

    Training on crops costs (crop / S)^2 of a whole image, so a 2-core machine can learn at 256 px;
    the fully convolutional UNet then runs on whole images. A crop is centred on a random tumour
    pixel with probability ``tumour_fraction`` (half the tumours cover < 1.3 % of a slice: uniform
    crops would mostly show background), otherwise on a uniform pixel; it is moved inside the
    image. Stateless: the same batch seed gives the same crops.
    """
    if not 0.0 <= tumour_fraction <= 1.0:
        raise ValueError(f"tumour_fraction must be in [0, 1], got {tumour_fraction!r}")

    def crop(images, masks, batch_seed):
        batch_seed = tf.cast(batch_seed, tf.int64) + tf.constant([7919, seed], tf.int64)
        shape = tf.shape(images)
        batch, size = shape[0], shape[1]
        choose_seed, pixel_seed = (tf.random.experimental.stateless_split(batch_seed, 2)[i]
                                   for i in range(2))
        on_tumour = tf.random.stateless_uniform([batch], choose_seed) < tumour_fraction
        # Gumbel-max: argmax of log(weight) + Gumbel noise draws a pixel with probability
        # proportional to its weight (tumour pixels), or uniformly when every weight is equal.
        uniform = tf.random.stateless_uniform([batch, size * size], pixel_seed,
                                              minval=1e-9, maxval=1.0)
        gumbel = -tf.math.log(-tf.math.log(uniform))
        tumour = tf.reshape(tf.cast(masks[..., 0] > 0.5, tf.float32), [batch, size * size])
        log_weight = tf.where(on_tumour[:, None], tf.math.log(tumour + 1e-9), 0.0)
        centre = tf.argmax(log_weight + gumbel, axis=1, output_type=tf.int32)
        half = crop_size // 2
        top = tf.clip_by_value(centre // size - half, 0, size - crop_size)
        left = tf.clip_by_value(centre % size - half, 0, size - crop_size)
        # Integer gathers: a crop is a copy of the pixels, never a resampling.
        offsets = tf.range(crop_size)
        rows, cols = top[:, None] + offsets, left[:, None] + offsets

        def cut(tensor):
            tensor = tf.gather(tensor, rows, axis=1, batch_dims=1)
            return tf.gather(tensor, cols, axis=2, batch_dims=1)

        cropped_images, cropped_masks = cut(images), cut(masks)
        return cropped_images, cropped_masks

    return crop


# ----------------------------------------------------------------------------- classification extras

EXTRA_FIELDS = ("gamma", "noise", "blur", "erasing", "mixup", "cutmix")


def _blur_kernel(sigma: float = 1.5, radius: int = 3):
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(taps / sigma))
    weights = weights / tf.reduce_sum(weights)
    return tf.reshape(weights, [-1, 1, 1, 1]), tf.reshape(weights, [1, -1, 1, 1])


def _beta(shape, alpha: float, seeds):
    """Beta(alpha, alpha) from two stateless gamma draws (no stateless beta in TF)."""
    a = tf.random.stateless_gamma(shape, seeds[0], alpha)
    b = tf.random.stateless_gamma(shape, seeds[1], alpha)
    return a / tf.maximum(a + b, 1e-12)


def make_batch_regulariser(augment_config, seed: int = 0):
    """``fn(images, one_hot_labels, batch_seed) -> (images, labels)`` or None if all off.

    What the geometric Keras layers do not cover, for scanners and contrasts that differ
    between sites: per-image gamma, Gaussian noise and blur (a blend towards a blurred copy),
    random erasing of one box, and mixup / cutmix between each image and its mirror in the
    batch (labels mixed in the same ratio; each batch picks one of the two when both are on).
    Stateless: ``batch_seed`` (shape [2] integers) decides every draw, so the deterministic
    pipeline keeps its (seed, epoch, step) keying. Pixel values are 0..255 float.
    """
    get = (augment_config.get if isinstance(augment_config, dict)
           else lambda k, d: getattr(augment_config, k, d))
    gamma, noise, blur, erasing, mixup, cutmix = (float(get(name, 0.0) or 0.0)
                                                  for name in EXTRA_FIELDS)
    rotate90 = bool(get("rotate90", False))
    window, resample, jpeg = (float(get(name, 0.0) or 0.0) for name in ("window", "resample", "jpeg"))
    if not any((gamma, noise, blur, erasing, mixup, cutmix, rotate90, window, resample, jpeg)):
        return None
    mix_probability = float(get("mix_probability", 1.0))
    column, row = _blur_kernel()

    def regularise(images, labels, batch_seed):
        batch_seed = tf.cast(batch_seed, tf.int64) + tf.constant([0, seed + 7919], tf.int64)
        seeds = tf.unstack(tf.random.experimental.stateless_split(batch_seed, num=27), axis=0)
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.float32)
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]

        def uniform(k, low=0.0, high=1.0, size=None):
            return tf.random.stateless_uniform(size if size is not None else [batch, 1, 1, 1],
                                               seeds[k], low, high)

        if rotate90:  # square images: a quarter turn keeps the shape
            quarter = tf.reshape(tf.floor(uniform(20, 0.0, 4.0, size=[batch])), [-1, 1, 1, 1])
            turned = images
            for k in (1, 2, 3):
                turned = tf.where(tf.equal(quarter, float(k)), tf.image.rot90(images, k), turned)
            images = turned
        if window:  # another window: values outside [low, high] clip, the rest stretch to 0..255
            low = 255.0 * uniform(21, 0.0, window)
            high = 255.0 * (1.0 - uniform(22, 0.0, window))
            images = tf.clip_by_value((images - low) * (255.0 / (high - low)), 0.0, 255.0)
        if gamma:
            exponent = tf.exp(uniform(0, -gamma, gamma))
            images = 255.0 * tf.pow(tf.clip_by_value(images / 255.0, 0.0, 1.0), exponent)
        if blur:
            channels = images.shape[-1] or 1
            blurred = images
            for kernel in (column, row):
                blurred = tf.nn.depthwise_conv2d(
                    blurred, tf.tile(kernel, [1, 1, channels, 1]), [1, 1, 1, 1], "SAME")
            images = images + uniform(1, 0.0, blur) * (blurred - images)
        if noise:
            sigma = 255.0 * uniform(2, 0.0, noise)
            images = images + sigma * tf.random.stateless_normal(tf.shape(images), seeds[3])
        images = tf.clip_by_value(images, 0.0, 255.0)
        if resample:  # exported smaller and enlarged again: one size per batch
            factor = uniform(23, 0.35, 0.9, size=[])
            small = tf.maximum(tf.cast(tf.round(tf.cast(height, tf.float32) * factor), tf.int32), 8)
            smaller = tf.image.resize(images, tf.stack([small, small]), method="area")
            again = tf.image.resize(smaller, tf.stack([height, width]), method="bilinear")
            images = tf.where(uniform(24) < resample, tf.clip_by_value(again, 0.0, 255.0), images)
        if jpeg:  # compressed again by another tool
            image_seeds = tf.random.experimental.stateless_split(seeds[25], num=batch)

            def recompress(pair):
                image, image_seed = pair
                return tf.image.stateless_random_jpeg_quality(image / 255.0, 30, 95, image_seed)

            compressed = tf.map_fn(recompress, (images, image_seeds),
                                   fn_output_signature=tf.float32) * 255.0
            compressed = tf.reshape(compressed, tf.shape(images))
            images = tf.where(uniform(26) < jpeg, compressed, images)
        ys = (tf.cast(tf.range(height), tf.float32)[None, :, None, None] + 0.5) / tf.cast(
            height, tf.float32)
        xs = (tf.cast(tf.range(width), tf.float32)[None, None, :, None] + 0.5) / tf.cast(
            width, tf.float32)

        def box(k, area):
            """A [B, H, W, 1] 0/1 box of the given area fraction per image, anywhere."""
            aspect = tf.exp(uniform(k, math.log(0.3), math.log(1 / 0.3)))
            box_h = tf.minimum(tf.sqrt(area * aspect), 1.0)
            box_w = tf.minimum(tf.sqrt(area / aspect), 1.0)
            centre_y, centre_x = uniform(k + 1), uniform(k + 2)
            inside = ((tf.abs(ys - centre_y) < box_h / 2) & (tf.abs(xs - centre_x) < box_w / 2))
            return tf.cast(inside, tf.float32)

        if erasing:
            chosen = tf.cast(uniform(4) < erasing, tf.float32)
            region = box(5, uniform(8, 0.02, 0.2)) * chosen
            fill = uniform(9, 0.0, 255.0)
            images = images * (1.0 - region) + fill * region
        if mixup or cutmix:
            partner_images, partner_labels = tf.reverse(images, [0]), tf.reverse(labels, [0])
            use_cutmix = (uniform(10, size=[]) < 0.5) if (mixup and cutmix) else bool(cutmix)
            whole = tf.cast(uniform(11) >= mix_probability, tf.float32)  # 1: left unmixed

            def do_mixup():
                lam = _beta([batch, 1, 1, 1], mixup or 1.0, seeds[16:18])
                lam = whole + (1.0 - whole) * lam
                mixed = lam * images + (1.0 - lam) * partner_images
                return mixed, lam[:, 0, 0] * labels + (1.0 - lam[:, 0, 0]) * partner_labels

            def do_cutmix():
                lam = _beta([batch, 1, 1, 1], cutmix or 1.0, seeds[18:20])
                region = box(12, 1.0 - lam) * (1.0 - whole)
                kept = 1.0 - tf.reduce_mean(region, axis=[1, 2])  # the area actually pasted
                mixed = images * (1.0 - region) + partner_images * region
                return mixed, kept * labels + (1.0 - kept) * partner_labels

            if isinstance(use_cutmix, bool):
                images, labels = do_cutmix() if use_cutmix else do_mixup()
            else:
                images, labels = tf.cond(use_cutmix, do_cutmix, do_mixup)
        return images, labels

    return regularise
