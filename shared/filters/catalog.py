"""The filter codes of compiled workflows, and building filters and chains from them.

A compiled workflow carries each filter as ``(code, params)`` (``shared.filters.spec``
compiles authoring specs to it). ``build`` checks that form and makes the filter; each code's
class is imported only when it is first built, so a board holds only the filters its
workflow uses. Boards import this module to build a workflow's chains and drop it again.
"""

import sys

from shared.filters import Chain

_SEQ = (list, tuple)  # built once: a (list, tuple) literal in a function is built per call

# code -> (filter type, module, class, parameter names); code 0 is not a filter
_TABLE = (
    ("", "", "", ()),
    ("moving_average", "shared.filters.moving_average", "MovingAverage", ("window", "partial")),
    ("ema", "shared.filters.ema", "Ema", ("alpha_q14",)),
    ("median", "shared.filters.median", "Median", ("window", "partial")),
    ("min", "shared.filters.minmax", "WindowMin", ("window", "partial")),
    ("max", "shared.filters.minmax", "WindowMax", ("window", "partial")),
    ("lowpass", "shared.filters.ema", "LowPass", ("alpha_q14",)),
    ("highpass", "shared.filters.ema", "HighPass", ("alpha_q14",)),
    ("biquad", "shared.filters.biquad", "Biquad", ("b0", "b1", "b2", "a1", "a2")),
    ("delta", "shared.filters.delta", "Delta", ("threshold",)),
    ("clamp", "shared.filters.clamp", "Clamp", ("lo", "hi", "drop")),
    ("calibrate", "shared.filters.calibrate", "CalibrateLinear", ("mult", "shift", "offset")),
    ("hysteresis", "shared.filters.hysteresis", "Hysteresis", ("low", "high")),
    ("debounce", "shared.filters.debounce", "Debounce", ("n",)),
    ("throttle", "shared.filters.throttle", "Throttle", ("n",)),
    ("heartbeat", "shared.filters.heartbeat", "Heartbeat", ("n",)),
)

FILTER_CODES = {}
for _code in range(1, len(_TABLE)):
    FILTER_CODES[_TABLE[_code][0]] = _code


def _entry(code):
    if type(code) is int and 0 < code < len(_TABLE):
        return _TABLE[code]
    raise ValueError("code: %r is not a filter code" % (code,))


def param_names(code):
    """The names of a filter code's params, in order; ValueError naming an unknown code."""
    return _entry(code)[3]


def filter_name(code):
    """The filter type of a code (``"median"``); ValueError naming an unknown code."""
    return _entry(code)[0]


def filter_class(code):
    """The class for a filter code, imported on first use; ValueError naming an unknown code."""
    e = _entry(code)
    __import__(e[1])  # nothing is allocated once the module is loaded
    return getattr(sys.modules[e[1]], e[2])


def build(code, params):
    """A new filter from its compiled ``(code, params)``; params are ints (flags 0/1).

    Raises ValueError naming the filter and the parameter for an unknown code, a wrong
    number of params or an out-of-range param.
    """
    e = _entry(code)
    if not isinstance(params, _SEQ):
        raise ValueError("%s: params %r is not a tuple" % (e[0], params))
    if len(params) != len(e[3]):
        raise ValueError(
            "%s: takes %d params (%s), got %d" % (e[0], len(e[3]), ", ".join(e[3]), len(params))
        )
    try:
        return filter_class(code)(*params)
    except ValueError as err:
        raise ValueError("%s: %s" % (e[0], err)) from None


def build_chain(items):
    """A Chain from a list of compiled ``(code, params)`` pairs, in order."""
    if not isinstance(items, _SEQ):
        raise ValueError("chain: %r is not a list of (code, params)" % (items,))
    fs = []
    for i in range(len(items)):
        item = items[i]
        if not isinstance(item, _SEQ) or len(item) != 2:
            raise ValueError("chain[%d]: %r is not a (code, params) pair" % (i, item))
        try:
            fs.append(build(item[0], item[1]))
        except ValueError as e:
            raise ValueError("chain[%d]: %s" % (i, e)) from None
    return Chain(fs)
