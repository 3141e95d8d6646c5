"""Recurrent layers (LSTM, GRU, RNN), unrolled over the sequence into atomic ops."""

from __future__ import annotations
