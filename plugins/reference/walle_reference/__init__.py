"""Walle's reference backend: the atomic op set in numpy, the oracle for every other backend."""
