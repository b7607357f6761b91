from hengwen.data.audit import FEATURE_NAMES, featurize, surface_audit

from ..conftest import TINY_DATA


def test_form_features_are_one_row_per_agent_turn():
    features, gold = featurize(TINY_DATA)
    assert features.shape == (16, len(FEATURE_NAMES)) and gold.shape == (16, 4)


def test_audit_reports_test_macro_f1():
    result = surface_audit(TINY_DATA, TINY_DATA, TINY_DATA)
    assert 0.0 <= result["test"]["macro_f1"] <= 1.0
    assert result["test"]["examples"] == 16
