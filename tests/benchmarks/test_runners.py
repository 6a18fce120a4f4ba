"""benchmarks.runners: what the benchmarks record of the machine they ran on."""

from __future__ import annotations

from benchmarks.runners import cpu_name

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\n"
ZEN4 = ZEN3.replace("model\t\t: 1\n", "model\t\t: 17\n") + "processor\t: 1\ncpu family\t: 99\n"
INTEL = "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 106\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n"


def test_a_bare_model_name_gets_the_first_cpus_family_and_model_so_two_machines_differ():
    assert cpu_name(ZEN3) == "AMD EPYC (family 25, model 1)"
    assert cpu_name(ZEN4) == "AMD EPYC (family 25, model 17)"


def test_a_model_name_with_its_model_number_is_kept_as_it_is():
    assert cpu_name(INTEL) == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"


def test_no_model_name_falls_back():
    assert cpu_name("processor\t: 0\nCPU implementer\t: 0x41\n", fallback="aarch64") == "aarch64"
