"""Portable helper functions (written once, typed by the ``HT`` macro) and the element-wise
expression tables shared by every kernel and dialect.

Expressions are written in the portable subset of :mod:`walle_core.kernels.spec`: operands are
``x`` (unary) or ``a``/``b`` (binary) of type ``T``; ``Z``/``ONE`` are ``T`` zero and one;
``P0``/``P1`` are the op's float parameters already converted to ``T``. Ternaries rather than
``min``/``max`` keep numpy's NaN propagation in every dialect.
"""

from __future__ import annotations

from collections.abc import Callable

# erfc by its own rational-exp form (fractional error ~1.2e-7 everywhere), so that GELU's left
# tail, 0.5 x erfc(-x / sqrt2), never forms 1 + erf(x / sqrt2), which cancels below x = -2
_ERFC = """HT w_erfc(HT x) {
  HT ax = x < CAST(HT, 0) ? -x : x;
  HT t = CAST(HT, 1) / (CAST(HT, 1) + CAST(HT, 0.5) * ax);
  HT y = t * exp(-ax * ax - CAST(HT, 1.26551223) + t * (CAST(HT, 1.00002368) + t * (CAST(HT, 0.37409196)
    + t * (CAST(HT, 0.09678418) + t * (CAST(HT, -0.18628806) + t * (CAST(HT, 0.27886807)
    + t * (CAST(HT, -1.13520398) + t * (CAST(HT, 1.48851587) + t * (CAST(HT, -0.82215223)
    + t * CAST(HT, 0.17087277))))))))));
  return x < CAST(HT, 0) ? CAST(HT, 2) - y : y;
}"""

_ERF = """HT w_erf(HT x) {
  HT ax = x < CAST(HT, 0) ? -x : x;
  if (ax < CAST(HT, 0.5)) {
    HT x2 = x * x;
    return x * (CAST(HT, 1.1283791670955126) + x2 * (CAST(HT, -0.37612638903183754)
      + x2 * (CAST(HT, 0.11283791670955126) + x2 * (CAST(HT, -0.02686617064513125)
      + x2 * (CAST(HT, 0.005223977625442188) + x2 * CAST(HT, -0.0008548327023450852))))));
  }
  HT r = CAST(HT, 1) - w_erfc(ax);
  return x < CAST(HT, 0) ? -r : r;
}"""

# Vulkan lets exp be 3 + 2|x| ulp off (lavapipe: ~1e-5 relative at x = 40): the GLSL dialect
# replaces float exp by this one (Cody-Waite reduction by ln 2, degree-8 polynomial, ldexp).
GLSL_EXP = """float w_exp(float x) {
  if (x != x) return x;
  if (x > 88.72284f) return 1.0f / 0.0f;
  if (x < -103.97208f) return 0.0f;
  float k = floor(x * 1.44269504f + 0.5f);
  precise float r = (x - k * 0.693145752f) - k * 1.42860677e-06f;
  precise float p = 2.48015873e-05f;
  p = p * r + 1.98412698e-04f;
  p = p * r + 1.38888889e-03f;
  p = p * r + 8.33333333e-03f;
  p = p * r + 4.16666667e-02f;
  p = p * r + 1.66666667e-01f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int ki = int(k);
  if (ki > 127) return ldexp(p, ki - 2) * 4.0f;
  if (ki < -125) return ldexp(p, ki + 60) * 8.67361738e-19f;
  return ldexp(p, ki);
}
#define exp(x) w_exp(x)"""

_FMOD = """HT w_fmod(HT a, HT b) {
  if (isinf(b) && !isinf(a)) return a;
  HT q = trunc(a / b);
  PRECISE HT r = fma(-b, q, a);
  HT s = (a < CAST(HT, 0)) == (b < CAST(HT, 0)) ? b : -b;
  if (r != CAST(HT, 0) && ((r < CAST(HT, 0)) != (a < CAST(HT, 0)))) r = r + s;
  if ((r < CAST(HT, 0) ? -r : r) >= (b < CAST(HT, 0) ? -b : b)) r = r - s;
  return r;
}"""

_EXPM1 = """HT w_expm1(HT x) {
  if (x > CAST(HT, -0.5) && x < CAST(HT, 0.5)) {
    HT p = CAST(HT, 2.7557319223985893e-06);
    p = p * x + CAST(HT, 2.48015873015873e-05);
    p = p * x + CAST(HT, 0.0001984126984126984);
    p = p * x + CAST(HT, 0.001388888888888889);
    p = p * x + CAST(HT, 0.008333333333333333);
    p = p * x + CAST(HT, 0.041666666666666664);
    p = p * x + CAST(HT, 0.16666666666666666);
    p = p * x + CAST(HT, 0.5);
    return x + x * x * p;
  }
  HT u = exp(x);
  if (u == CAST(HT, 1)) return x;
  PRECISE HT um = u - CAST(HT, 1);
  if (um == CAST(HT, -1)) return CAST(HT, -1);
  if (u > CAST(HT, 1e30)) return um;
  return um * x / log(u);
}"""

_TANH = """HT w_tanh(HT x) {
  if (x > CAST(HT, 15)) return CAST(HT, 1);
  if (x < CAST(HT, -15)) return CAST(HT, -1);
  /* near 0 (and at -0, whose sign a later division sees): the series keeps x's sign */
  if (x > CAST(HT, -0.0004) && x < CAST(HT, 0.0004)) return x * (CAST(HT, 1) - x * x / CAST(HT, 3));
  HT e = w_expm1(CAST(HT, 2) * x);
  return e / (e + CAST(HT, 2));
}"""

# Vulkan allows asin/acos/atan thousands of ulp off (lavapipe is ~1e-4): own versions for GLSL.
_ATAN = """HT w_atan(HT x) {
  HT ax = x < CAST(HT, 0) ? -x : x;
  bool inv = ax > CAST(HT, 1);
  HT t = inv ? CAST(HT, 1) / ax : ax;
  bool shift = t > CAST(HT, 0.41421356237309503);
  HT u = shift ? (t - CAST(HT, 1)) / (t + CAST(HT, 1)) : t;
  HT u2 = u * u;
  HT p = CAST(HT, -0.043478260869565216);
  p = p * u2 + CAST(HT, 0.047619047619047616);
  p = p * u2 + CAST(HT, -0.05263157894736842);
  p = p * u2 + CAST(HT, 0.058823529411764705);
  p = p * u2 + CAST(HT, -0.06666666666666667);
  p = p * u2 + CAST(HT, 0.07692307692307693);
  p = p * u2 + CAST(HT, -0.09090909090909091);
  p = p * u2 + CAST(HT, 0.1111111111111111);
  p = p * u2 + CAST(HT, -0.14285714285714285);
  p = p * u2 + CAST(HT, 0.2);
  p = p * u2 + CAST(HT, -0.3333333333333333);
  HT r = u + u * u2 * p;
  if (shift) r = r + CAST(HT, 0.7853981633974483);
  if (inv) r = CAST(HT, 1.5707963267948966) - r;
  return x < CAST(HT, 0) ? -r : r;
}"""

_ASIN = """HT w_asin(HT x) {
  HT ax = x < CAST(HT, 0) ? -x : x;
  if (ax == CAST(HT, 1)) return x * CAST(HT, 1.5707963267948966);
  return w_atan(x / sqrt((CAST(HT, 1) - x) * (CAST(HT, 1) + x)));
}"""

_ACOS = """HT w_acos(HT x) {
  if (x == CAST(HT, -1)) return CAST(HT, 3.141592653589793);
  return CAST(HT, 2) * w_atan(sqrt((CAST(HT, 1) - x) / (CAST(HT, 1) + x)));
}"""

_ATAN2 = """HT w_atan2(HT y, HT x) {
  if (x != x || y != y) return x + y;
  HT pi = CAST(HT, 3.141592653589793);
  if (isinf(x) && isinf(y)) {
    HT r = x > CAST(HT, 0) ? pi * CAST(HT, 0.25) : pi * CAST(HT, 0.75);
    return y < CAST(HT, 0) ? -r : r;
  }
  bool yneg = y < CAST(HT, 0) || (y == CAST(HT, 0) && CAST(HT, 1) / y < CAST(HT, 0));
  bool xneg = x < CAST(HT, 0) || (x == CAST(HT, 0) && CAST(HT, 1) / x < CAST(HT, 0));
  if (y == CAST(HT, 0)) return xneg ? (yneg ? -pi : pi) : y;
  if (x == CAST(HT, 0)) return yneg ? -pi * CAST(HT, 0.5) : pi * CAST(HT, 0.5);
  HT r = w_atan(y / x);
  if (xneg) r = yneg ? r - pi : r + pi;
  return r;
}"""

_LOG1P = """HT w_log1p(HT x) {
  PRECISE HT u = CAST(HT, 1) + x;
  if (u == CAST(HT, 1)) return x;
  return log(u) * (x / (u - CAST(HT, 1)));
}"""

# acosh(1 + t) = log1p(t + sqrt(t (t + 2))): no cancellation near 1 (lavapipe's acosh loses
# ~5e-5 relative there); log(x) + ln 2 where x * x would overflow
_ACOSH = """HT w_acosh(HT x) {
  if (x < CAST(HT, 1)) return sqrt(CAST(HT, -1));
  if (x > CAST(HT, 1e15)) return log(x) + CAST(HT, 0.6931471805599453);
  HT t = x - CAST(HT, 1);
  return w_log1p(t + sqrt(t * (t + CAST(HT, 2))));
}"""

_POW = """HT w_pow(HT a, HT b) {
  if (b == CAST(HT, 0) || a == CAST(HT, 1)) return CAST(HT, 1);
  if (a != a || b != b) return a + b;
  if (a < CAST(HT, 0)) {
    if (W_TRUNC(b) != b) return sqrt(CAST(HT, -1));
    HT r = pow(-a, b);
    HT h = b * CAST(HT, 0.5);
    return W_TRUNC(h) != h ? -r : r;
  }
  if (a == CAST(HT, 0)) return b > CAST(HT, 0) ? CAST(HT, 0) : exp(CAST(HT, 1000));
  return pow(a, b);
}"""

_MOD = """HT w_mod(HT a, HT b) {
  HT r = W_FMOD(a, b);
  if (r != CAST(HT, 0) && ((r < CAST(HT, 0)) != (b < CAST(HT, 0)))) r += b;
  return r;
}"""

_IREM = """HT w_irem(HT a, HT b) {
  if (b == CAST(HT, 0)) return CAST(HT, 0);
  if (CAST(HT, -1) < CAST(HT, 0) && b == CAST(HT, -1)) return CAST(HT, 0);
  return a - (a / b) * b;
}"""

_IMOD = """HT w_imod(HT a, HT b) {
  HT r = w_irem(a, b);
  if (r != CAST(HT, 0) && ((r < CAST(HT, 0)) != (b < CAST(HT, 0)))) r += b;
  return r;
}"""

_IDIV = """HT w_idiv(HT a, HT b) {
  if (b == CAST(HT, 0)) return CAST(HT, 0);
  if (CAST(HT, -1) < CAST(HT, 0) && b == CAST(HT, -1)) return CAST(HT, 0) - a;
  return a / b;
}"""

_IPOW = """HT w_ipow(HT a, HT b) {
  if (b < CAST(HT, 0)) {
    if (a == CAST(HT, 1)) return CAST(HT, 1);
    if (a == CAST(HT, -1)) return (b & CAST(HT, 1)) != CAST(HT, 0) ? a : CAST(HT, 1);
    return CAST(HT, 0);
  }
  HT r = CAST(HT, 1);
  while (b > CAST(HT, 0)) {
    if ((b & CAST(HT, 1)) != CAST(HT, 0)) r = r * a;
    a = a * a;
    b = b >> CAST(HT, 1);
  }
  return r;
}"""


def _text(code: str, dialects: tuple[str, ...] = ("opencl", "glsl", "msl")) -> Callable[[str], str]:
    return lambda d: code if d in dialects else ""


# name -> dialect -> definition text ("" where the dialect has a builtin behind the macro)
HELPERS: dict[str, Callable[[str], str]] = {
    "w_erfc": _text(_ERFC, ("glsl", "msl")),
    "w_erf": _text(_ERF, ("glsl", "msl")),
    "w_fmod": _text(_FMOD, ("glsl",)),
    "w_expm1": _text(_EXPM1),
    "w_tanh": _text(_TANH),
    "w_atan": _text(_ATAN, ("glsl",)),
    "w_asin": _text(_ASIN, ("glsl",)),
    "w_acos": _text(_ACOS, ("glsl",)),
    "w_atan2": _text(_ATAN2, ("glsl",)),
    "w_log1p": _text(_LOG1P),
    "w_acosh": _text(_ACOSH),
    "w_pow": _text(_POW),
    "w_mod": _text(_MOD),
    "w_irem": _text(_IREM),
    "w_imod": _text(_IMOD),
    "w_idiv": _text(_IDIV),
    "w_ipow": _text(_IPOW),
}
HELPER_DEPS = {"w_erf": ("w_erfc",), "w_mod": ("w_fmod",), "w_imod": ("w_irem",), "w_tanh": ("w_expm1",),
               "w_asin": ("w_atan",), "w_acos": ("w_atan",), "w_atan2": ("w_atan",),
               "w_acosh": ("w_log1p",)}
HELPER_ORDER = ("w_fmod", "w_erfc", "w_erf", "w_expm1", "w_tanh", "w_atan", "w_asin", "w_acos", "w_atan2", "w_log1p", "w_acosh", "w_pow", "w_mod", "w_irem", "w_imod",
                "w_idiv", "w_ipow")

CLAMP01 = "({v} < Z ? Z : ({v} > ONE ? ONE : {v}))"

# Unary on floats: (expression, helpers, needs transcendental math)
FLOAT_UNARY: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "identity": ("x", (), False),
    "abs": ("(x < Z ? -x : (x == Z ? Z : x))", (), False),  # +0 for -0, like numpy
    "neg": ("(-x)", (), False),
    "exp": ("exp(x)", (), True),
    "log": ("log(x)", (), True),
    "sqrt": ("sqrt(x)", (), False),
    "rsqrt": ("(ONE / sqrt(x))", (), False),
    "reciprocal": ("(ONE / x)", (), False),
    "sin": ("sin(x)", (), True),
    "cos": ("cos(x)", (), True),
    "tan": ("tan(x)", (), True),
    "asin": ("W_ASIN(x)", ("w_asin",), True),
    "acos": ("W_ACOS(x)", ("w_acos",), True),
    "atan": ("W_ATAN(x)", ("w_atan",), True),
    # exp(|x| - ln 2) keeps sinh/cosh finite up to |x| ~ 89.4; expm1 keeps sinh exact near 0
    "sinh": ("((x < Z ? -ONE : ONE) * ((x < Z ? -x : x) > CAST(T, 20) ? exp((x < Z ? -x : x) - "
             "CAST(T, 0.6931471805599453)) : CAST(T, 0.5) * (w_expm1(x < Z ? -x : x) + w_expm1(x < Z ? -x : x) "
             "/ (w_expm1(x < Z ? -x : x) + ONE))))", ("w_expm1",), True),
    "cosh": ("((x < Z ? -x : x) > CAST(T, 20) ? exp((x < Z ? -x : x) - CAST(T, 0.6931471805599453)) : "
             "CAST(T, 0.5) * (exp(x) + exp(-x)))", (), True),
    "tanh": ("w_tanh(x)", ("w_tanh",), True),
    "asinh": ("asinh(x)", (), True),
    "acosh": ("w_acosh(x)", ("w_acosh",), True),
    "atanh": ("atanh(x)", (), True),
    "sigmoid": ("(x >= Z ? ONE / (ONE + exp(-x)) : exp(x) / (ONE + exp(x)))", (), True),
    "relu": ("(x <= Z ? Z : x)", (), False),
    "erf": ("W_ERF(x)", ("w_erf",), True),
    "floor": ("floor(x)", (), False),
    "ceil": ("ceil(x)", (), False),
    "round": ("W_RINT(x)", (), False),
    "sign": ("(x > Z ? ONE : (x < Z ? -ONE : x))", (), False),
    "softplus": ("(x > CAST(T, 20) ? x : w_log1p(exp(x)))", ("w_log1p",), True),
    "softsign": ("(x / (ONE + (x < Z ? -x : x)))", (), False),
    "gelu": ("(CAST(T, 0.5) * x * W_ERFC(x * CAST(T, -0.7071067811865476)))", ("w_erfc",), True),
    "gelu_tanh": ("(CAST(T, 0.5) * x * (ONE + w_tanh(CAST(T, 0.7978845608028654) * "
                  "(x + CAST(T, 0.044715) * x * x * x))))", ("w_tanh",), True),
    "hardswish": ("(x * " + CLAMP01.format(v="(x / CAST(T, 6) + CAST(T, 0.5))") + ")", (), False),
    "hardsigmoid": (CLAMP01.format(v="(P0 * x + P1)"), (), False),
    "leaky_relu": ("(x >= Z ? x : P0 * x)", (), False),
    "elu": ("(x > Z ? x : P0 * w_expm1(x))", ("w_expm1",), True),
    "selu": ("(P1 * (x > Z ? x : P0 * w_expm1(x)))", ("w_expm1",), True),
    "celu": ("((x > Z ? x : Z) + (x > Z ? Z : P0 * w_expm1(x / P0)))", ("w_expm1",), True),
    "clip": ("(x < P0 ? P0 : (x > P1 ? P1 : x))", (), False),
    "mish": ("(x * w_tanh(x > CAST(T, 20) ? x : w_log1p(exp(x))))", ("w_tanh", "w_log1p"), True),
    "thresholded_relu": ("(x > P0 ? x : Z)", (), False),
}
FLOAT_PREDICATES: dict[str, str] = {
    "isnan": "(isnan(x) ? 1 : 0)",
    "isinf": "(isinf(x) ? 1 : 0)",
    "isposinf": "((isinf(x) && x > Z) ? 1 : 0)",
    "isneginf": "((isinf(x) && x < Z) ? 1 : 0)",
}
INT_UNARY: dict[str, str] = {
    "identity": "x",
    "abs": "(x < Z ? Z - x : x)",
    "neg": "(Z - x)",
    "relu": "(x < Z ? Z : x)",
    "sign": "(x > Z ? ONE : (x < Z ? Z - ONE : Z))",
    "clip": "(x < P0 ? P0 : (x > P1 ? P1 : x))",
    "bitwise_not": "(~x)",
}
BOOL_UNARY: dict[str, str] = {
    "identity": "x",
    "not": "(x == Z ? 1 : 0)",
    "bitwise_not": "(x == Z ? 1 : 0)",
}

# Binary: (float expression, float helpers, needs math) / int expression (+ helpers)
FLOAT_BINARY: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "add": ("(a + b)", (), False),
    "sub": ("(a - b)", (), False),
    "mul": ("(a * b)", (), False),
    "div": ("(a / b)", (), False),
    "pow": ("w_pow(a, b)", ("w_pow",), True),
    "max": ("((a > b || a != a) ? a : b)", (), False),
    "min": ("((a < b || a != a) ? a : b)", (), False),
    "mod": ("w_mod(a, b)", ("w_fmod", "w_mod"), False),
    "fmod": ("W_FMOD(a, b)", ("w_fmod",), False),
    "atan2": ("W_ATAN2(a, b)", ("w_atan2",), True),
}
INT_BINARY: dict[str, tuple[str, tuple[str, ...]]] = {
    "add": ("(a + b)", ()),
    "sub": ("(a - b)", ()),
    "mul": ("(a * b)", ()),
    "div": ("w_idiv(a, b)", ("w_idiv",)),
    "pow": ("w_ipow(a, b)", ("w_ipow",)),
    "max": ("(a > b ? a : b)", ()),
    "min": ("(a < b ? a : b)", ()),
    "mod": ("w_imod(a, b)", ("w_irem", "w_imod")),
    "fmod": ("w_irem(a, b)", ("w_irem",)),
    "bitand": ("(a & b)", ()),
    "bitor": ("(a | b)", ()),
    "bitxor": ("(a ^ b)", ()),
    "shl": ("(a << b)", ()),
    "shr": ("(a >> b)", ()),
}
BOOL_BINARY: dict[str, str] = {
    "and": "(((a != Z) && (b != Z)) ? 1 : 0)",
    "or": "(((a != Z) || (b != Z)) ? 1 : 0)",
    "xor": "(((a != Z) != (b != Z)) ? 1 : 0)",
    "bitand": "(a & b)",
    "bitor": "(a | b)",
    "bitxor": "(a ^ b)",
    "max": "(a > b ? a : b)",
    "min": "(a < b ? a : b)",
    "add": "(((a != Z) || (b != Z)) ? 1 : 0)",
    "mul": "(((a != Z) && (b != Z)) ? 1 : 0)",
}
COMPARE: dict[str, str] = {
    "eq": "((a == b) ? 1 : 0)",
    "lt": "((a < b) ? 1 : 0)",
    "le": "((a <= b) ? 1 : 0)",
    "gt": "((a > b) ? 1 : 0)",
    "ge": "((a >= b) ? 1 : 0)",
}
