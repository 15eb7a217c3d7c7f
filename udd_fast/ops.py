"""The hot paths behind one API. The engine calls only these functions; each has a plain-PyTorch
reference (`*_ref`) that every faster backend is tested against."""
from .augment import diff_augment_ref
from .decode import crop_resize_ref


def crop_resize(images, src, boxes, out_size):
    """Per output sample: crop images[src[n]] (padded right/bottom with 0.5) to the integer box
    boxes[n] = (y0, x0, y1, x1), then resize bilinearly to out_size. See decode.crop_resize_ref."""
    return crop_resize_ref(images, src, boxes, out_size)


def diff_augment(x, params, strategy, index=None):
    """IDC's augmentation with parameters as a tensor. See augment.diff_augment_ref."""
    return diff_augment_ref(x, params, strategy, index)
