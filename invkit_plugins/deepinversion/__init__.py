"""DeepInversion (Yin et al., CVPR 2020) as an invkit plugin. (Being written: see issue 3.)"""
