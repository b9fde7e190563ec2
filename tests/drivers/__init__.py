"""Tests of tenure.drivers: spec grammar, the OCF contract, process handling and the four driver classes."""
