package alloc

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

// WritePNG draws ns per operation against thread count, one panel per
// workload and operation (2 rows × 3 columns), one line per allocator
// (and environment), log-scale y as in the talk's figures.
func (rep *Report) WritePNG(path string) error {
	workloads := []string{"bulk", "random", "pipeline"}
	ops := []string{"alloc", "free"}
	var series []string // env/allocator, in first-seen order
	seen := map[string]bool{}
	for _, r := range rep.Results {
		k := r.Env + "/" + r.Allocator
		if !seen[k] {
			seen[k] = true
			series = append(series, k)
		}
	}
	grid := make([][]*plot.Plot, len(ops))
	for i, op := range ops {
		grid[i] = make([]*plot.Plot, len(workloads))
		for j, wl := range workloads {
			p := plot.New()
			p.Title.Text = fmt.Sprintf("%s: ns per %s", wl, op)
			p.X.Label.Text = "threads (> CPUs: overcommitted)"
			p.Y.Label.Text = "ns (log)"
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
			p.Legend.Top = true
			for si, s := range series {
				var xys plotter.XYs
				for _, r := range rep.Results {
					if r.Env+"/"+r.Allocator != s || r.Workload != wl {
						continue
					}
					v := r.AllocNs
					if op == "free" {
						v = r.FreeNs
					}
					xys = append(xys, plotter.XY{X: float64(r.Threads), Y: max(v, 0.1)})
				}
				if len(xys) == 0 {
					continue
				}
				l, pts, err := plotter.NewLinePoints(xys)
				if err != nil {
					return err
				}
				c := palette[si%len(palette)]
				l.Color, pts.Color = c, c
				p.Add(l, pts)
				p.Legend.Add(s, l, pts)
			}
			grid[i][j] = p
		}
	}
	img := vgimg.New(vg.Points(1200), vg.Points(650))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(ops), Cols: len(workloads), PadX: vg.Points(8), PadY: vg.Points(8),
		PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(4)}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j := range grid[i] {
			grid[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
