"""Label mapping: CPSC, SNOMED (Challenge 2020/21), PTB-XL scp_codes, CODE-15 CSVs."""
from __future__ import annotations

import pytest

from ecgray.errors import LabelError
from ecgray.io.labels import (
    LabelTable,
    Labels,
    canonical,
    detect_scheme,
    from_codes,
    from_dx,
    parse_labels_csv,
    parse_scp_codes,
    read_labels_csv,
    split_codes,
)
from ecgray.models.ribeiro2020 import CLASSES


def pos(lab: Labels) -> set[str]:
    return {c for c, v in lab.classes.items() if v}


def test_labels_default_is_none():
    lab = Labels.none()
    assert lab.scheme == "none" and not lab.normal and lab.raw == ()
    assert tuple(lab.classes) == CLASSES and not lab.vector().any()


def test_split_and_detect():
    assert split_codes(" 164889003, 59118001 ,") == ("164889003", "59118001")
    assert split_codes("") == () and split_codes(None) == ()
    assert detect_scheme(["164889003"]) == "snomed"
    assert detect_scheme(["AF", "RBBB"]) == "cpsc"
    assert detect_scheme([]) == "none"


@pytest.mark.parametrize("dx, classes, normal", [
    ("RBBB", {"RBBB"}, False),
    ("AF,RBBB", {"AF", "RBBB"}, False),
    ("I-AVB", {"1dAVb"}, False),
    ("LBBB", {"LBBB"}, False),
    ("Normal", set(), True),
    ("PAC", set(), False),
    ("STD", set(), False),
    ("STE,PVC", set(), False),
])
def test_cpsc_abbreviations(dx, classes, normal):
    lab = from_dx(dx)
    assert lab.scheme == "cpsc"
    assert pos(lab) == classes and lab.normal is normal
    assert lab.raw == tuple(dx.split(","))


@pytest.mark.parametrize("dx, classes, normal", [
    ("164889003", {"AF"}, False),
    ("164890007", set(), False),                 # atrial flutter is not AF
    ("270492004", {"1dAVb"}, False),
    ("164909002", {"LBBB"}, False),
    ("733534002", {"LBBB"}, False),              # complete LBBB
    ("59118001", {"RBBB"}, False),
    ("713427006", {"RBBB"}, False),              # complete RBBB
    ("713426002", set(), False),                 # incomplete RBBB is not RBBB
    ("426177001", {"SB"}, False),
    ("427084000", {"ST"}, False),
    ("426783006", set(), True),                  # sinus rhythm alone: healthy control
    ("426783006,164889003", {"AF"}, False),
    ("426783006,17338001", set(), False),        # SR + PVC: not a control
    ("164889003,59118001,270492004", {"AF", "RBBB", "1dAVb"}, False),
])
def test_snomed(dx, classes, normal):
    lab = from_dx(dx)
    assert lab.scheme == "snomed"
    assert pos(lab) == classes and lab.normal is normal


def test_canonical_equivalences():
    assert canonical("733534002") == canonical("164909002") == "164909002"
    assert canonical("713427006") == canonical("59118001") == "59118001"
    assert canonical("284470004") == canonical("63593006") == "63593006"
    assert canonical("427172004") == canonical("17338001") == "17338001"
    assert canonical(" 164889003 ") == "164889003"
    # raw keeps the codes as written; the class vectors of the pairs agree
    a, b = from_dx("733534002,713427006"), from_dx("164909002,59118001")
    assert a.raw == ("733534002", "713427006")
    assert (a.vector() == b.vector()).all()
    assert {canonical(c) for c in a.raw} == {canonical(c) for c in b.raw}


def test_parse_scp_codes():
    assert parse_scp_codes("{'NORM': 100.0, 'SR': 0.0}") == {"NORM": 100.0, "SR": 0.0}
    assert parse_scp_codes('{"IMI": 15, "CRBBB": 100.0}') == {"IMI": 15.0, "CRBBB": 100.0}
    assert parse_scp_codes("{}") == {}
    for bad in ("__import__('os').system('echo pwned')", "[1, 2]", "{'A': 'x'}", "{1: 2.0}", "not a dict"):
        with pytest.raises((ValueError, SyntaxError)):
            parse_scp_codes(bad)


PTBXL_CSV = """ecg_id,patient_id,age,sex,scp_codes,strat_fold,filename_lr,filename_hr
1,15709.0,56.0,1,"{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}",3,records100/00000/00001_lr,records500/00000/00001_hr
2,13243.0,19.0,0,"{'NORM': 80.0, 'SBRAD': 0.0}",2,records100/00000/00002_lr,records500/00000/00002_hr
3,20372.0,37.0,1,"{'NORM': 100.0, 'SR': 0.0}",5,records100/00000/00003_lr,records500/00000/00003_hr
4,17014.0,24.0,0,"{'CRBBB': 100.0, 'AFIB': 0.0, '1AVB': 50.0}",3,records100/00000/00004_lr,records500/00000/00004_hr
5,17448.0,19.0,1,"{'IRBBB': 100.0, 'CLBBB': 15.0, 'STACH': 0.0}",4,records100/00000/00005_lr,records500/00000/00005_hr
6,19005.0,18.0,1,"__import__('os').getcwd()",4,records100/00000/00006_lr,records500/00000/00006_hr
"""


def test_ptbxl_csv(tmp_path):
    p = tmp_path / "ptbxl_database.csv"
    p.write_text(PTBXL_CSV)
    t = read_labels_csv(str(p))
    assert isinstance(t, LabelTable) and t.scheme == "ptbxl"
    one = t.lookup("00001_lr")
    assert one.scheme == "ptbxl" and one.raw == ("NORM", "LVOLT", "SR")
    assert not one.normal and not one.vector().any()      # NORM + LVOLT: not a strict control
    assert t.lookup("00003_hr").normal and t.lookup("3").normal and t.lookup("HR00003").normal
    two = t.lookup("00002_lr")
    assert pos(two) == {"SB"} and not two.normal
    assert pos(t.lookup("HR00004")) == {"RBBB", "AF", "1dAVb"}
    assert pos(t.lookup("00005_hr")) == {"LBBB", "ST"}    # IRBBB is not RBBB
    with pytest.raises(LabelError) as e:
        t.lookup("00006_lr")
    assert e.value.error_type == "bad_scp_codes" and "00006_lr" in str(e.value)
    assert t.lookup("99999_lr") is None


def test_cpsc_reference_csv():
    t = parse_labels_csv("Recording,First_label,Second_label,Third_label\nA0001,5,,\nA0002,1,,\nA0003,2,5,\nA0004,3,8,9\n")
    assert t.scheme == "cpsc"
    assert t.lookup("A0001").raw == ("RBBB",) and pos(t.lookup("A0001")) == {"RBBB"}
    assert t.lookup("A0002").normal
    assert pos(t.lookup("A0003")) == {"AF", "RBBB"}
    assert t.lookup("A0004").raw == ("I-AVB", "STD", "STE") and pos(t.lookup("A0004")) == {"1dAVb"}
    assert t.lookup("A9999") is None


def test_code15_csv_with_and_without_ids():
    t = parse_labels_csv("exam_id,age,is_male,1dAVb,RBBB,LBBB,SB,ST,AF,normal_ecg\n"
                         "101,50,True,False,True,False,False,False,False,False\n"
                         "102,60,False,False,False,False,False,False,False,True\n")
    assert t.scheme == "code15"
    assert pos(t.lookup("101")) == {"RBBB"} and not t.lookup("101").normal
    assert t.lookup("102").normal and t.lookup("102.0").normal
    g = parse_labels_csv("1dAVb,RBBB,LBBB,SB,AF,ST\n0,0,0,0,0,0\n0,0,1,0,1,0\n")
    assert g.lookup("anything") is None                     # positional only
    assert pos(g.lookup("x", row=1)) == {"LBBB", "AF"} and g.lookup("x", row=2) is None
    assert not g.lookup("x", row=0).normal                  # no normal_ecg column -> never normal


def test_bad_csv(tmp_path):
    with pytest.raises(LabelError) as e:
        parse_labels_csv("a,b\n1,2\n", "x.csv")
    assert e.value.error_type == "bad_labels_csv"
    with pytest.raises(LabelError) as e:
        read_labels_csv(str(tmp_path / "nope.csv"))
    assert e.value.error_type == "missing_labels_csv"


def test_from_codes_unknown_scheme():
    with pytest.raises(ValueError):
        from_codes(["x"], "nope")
