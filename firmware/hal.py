"""Board hardware from a board profile (``hw/boards/*.json``): sensor channels, outputs and
the safe-mode pin.

Channels and outputs are numbered in sorted name order, the same on every runtime
(MicroPython dicts do not keep insertion order). Samples are S16 ints in the channel's unit:
mV for ADC channels, centi-degrees C and centi-%RH for the SHT31. A failed read is None.
``read`` and ``set_output`` allocate nothing once the HAL is built.

``machine`` is injectable so the hardware paths can be tested against a fake module; on a
board the real one is imported. Checking a profile and building the hardware from it is
``firmware.profile``'s, imported for that only (the node drops it again); the sensor drivers
are modules of their own (``firmware.sht31``).
"""

from shared import const

# Copied from firmware/profile.py by python -m tools.dev.consts: edit them there.
_ADC = const(0)
_GPIO = const(0)
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_S16_MAX = const(32767)


def output_value(kind, top, value):
    """The value an output actually takes: 0/1 for _GPIO (any true value is 1), 0..top for PWM."""
    if kind == _GPIO:
        return 1 if value else 0
    if value < 0:
        return 0
    return top if value > top else value


class BoardHal:
    """The board's channels and outputs, built from a profile dict.

    ``machine`` defaults to the real module; ``i2c`` to a ``machine.I2C`` on the profile's bus.
    ``outputs`` holds each output's current value; ``channel_names`` and ``output_names`` are
    in index order.
    """

    def __init__(self, profile, machine=None, i2c=None):
        from firmware import profile as setup  # checks and builds once, then is dropped

        setup.build(self, profile, machine, i2c)

    def read(self, index):
        """One sample of channel ``index``: an S16 int in the channel's unit, or None."""
        if self._kinds[index] == _ADC:
            mv = self._dev[index].read_uv() // 1000
            if mv > _S16_MAX:
                return _S16_MAX
            return -_S16_MAX if mv < -_S16_MAX else mv
        return self._dev[index].read(self._quantity[index])

    def set_output(self, index, value):
        """Drive output ``index``; _GPIO takes 0/1, PWM 0..max (clamped). Returns the value set."""
        kind = self._okinds[index]
        v = output_value(kind, self._omax[index], value)
        if kind == _GPIO:
            self._out[index].value(v)
        elif v == self._omax[index]:
            self._out[index].duty_u16(65535)  # fully on, whatever the rounding of the scale
        else:
            self._out[index].duty_u16((v * self._oscale[index] + 8192) >> 14)
        self.outputs[index] = v
        return v

    def safe_mode_pin_held(self):
        """True while the profile's safe-mode pin (active low, e.g. the BOOT button) is held."""
        return self._safe is not None and self._safe.value() == 0
