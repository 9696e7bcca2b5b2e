# temporary experiment: calibration with exposure/framing nuisance switched off
import sys
from pneumo_ml import synthetic as S
orig = S._draw_frame
def clean(rng, size):
    f = orig(rng, size)
    f.update(zoom=1.0, shift=[0.0, 0.0], tilt=0.0, top=0.04, k=2.0, gain=1.0, offset=0.0, gamma=1.0, vignette=0.0)
    return f
S._draw_frame = clean
sys.argv[0] = "calibrate"
import runpy
runpy.run_path("scripts/calibrate_synthetic.py", run_name="__main__")
