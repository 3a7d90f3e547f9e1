"""Evaluation: translation scores (sacreBLEU BLEU and chrF, exact match, BLEU by source length)."""
