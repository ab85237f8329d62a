"""The console status of `run --mode monitor`: what a person reads in the terminal."""

from __future__ import annotations

from mistwatch.summary import devices_up_text


def test_device_totals_read_as_plain_english_plurals():
    devices = {"switch": {"connected": 29, "total": 30}, "ap": {"connected": 117, "total": 120},
               "gateway": {"connected": 30, "total": 30}}
    assert devices_up_text(devices) == "117/120 APs up, 30/30 gateways up, 29/30 switches up"
