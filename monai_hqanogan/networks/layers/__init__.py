from __future__ import annotations

from .equalized import LRELU_GAIN, EqualizedConv2d, EqualizedLinear, bias_act
from .modulated import NOISE_MODES, ModulatedConv2d, StyleConvLayer, ToImageLayer
from .resample import Blur2d, Upsample2x, fir_taps
