from __future__ import annotations

from .equalized import LRELU_GAIN, EqualizedConv2d, EqualizedLinear, activation_gain, bias_act, clamp_act, scaled_act
from .layout import follow_channels_last
from .modulated import NOISE_MODES, ModulatedConv2d, StyleConvLayer, ToImageLayer
from .resample import Blur2d, Upsample2x, fir_taps
