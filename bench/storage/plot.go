package main

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

// plots writes one throughput chart per setting and a ratio chart.
func plots(rep report, out string) error {
	workloads := []string{"load", "rndread", "scan100", "ycsb-a", "ycsb-b", "ycsb-c"}
	for _, setting := range []string{"in-memory", "4x-pool"} {
		var engines []string
		seen := map[string]bool{}
		for _, r := range rep.Results {
			if r.Setting == setting && !seen[r.Engine] {
				seen[r.Engine] = true
				engines = append(engines, r.Engine)
			}
		}
		var wls []string
		for _, wl := range workloads {
			for _, r := range rep.Results {
				if r.Setting == setting && r.Workload == wl {
					wls = append(wls, wl)
					break
				}
			}
		}
		p := plot.New()
		p.Title.Text = fmt.Sprintf("storage engines, %s (%d keys, %d-byte values)", setting, rep.Config.Keys, rep.Config.ValueSize)
		p.Y.Label.Text = "thousand operations per second"
		w := vg.Points(14)
		for i, eng := range engines {
			vals := make(plotter.Values, len(wls))
			for j, wl := range wls {
				for _, r := range rep.Results {
					if r.Setting == setting && r.Workload == wl && r.Engine == eng {
						vals[j] = r.OpsPerS / 1000
					}
				}
			}
			bars, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return err
			}
			bars.Color = palette[i%len(palette)]
			bars.LineStyle.Width = 0
			bars.Offset = w * vg.Length(float64(i)-float64(len(engines)-1)/2)
			p.Add(bars)
			p.Legend.Add(eng, bars)
		}
		p.Legend.Top = true
		p.NominalX(wls...)
		if err := p.Save(vg.Length(110+30*len(engines))*vg.Millimeter, 110*vg.Millimeter, filepath.Join(out, "storage-"+setting+".png")); err != nil {
			return err
		}
	}
	// Ratios of CumulusDB to each peer.
	p := plot.New()
	p.Title.Text = "CumulusDB throughput / peer throughput (above 1: CumulusDB faster)"
	p.Y.Label.Text = "ratio"
	series := []struct{ label, prefix, peer string }{
		{"in-memory vs pebble", "in-memory/%s/", "pebble"},
		{"in-memory vs bbolt", "in-memory/%s/", "bbolt"},
		{"4x-pool (O_DIRECT) vs pebble", "4x-pool/%s/", "pebble"},
		{"4x-pool (O_DIRECT) vs bbolt", "4x-pool/%s/", "bbolt"},
		{"4x-pool (buffered) vs pebble", "4x-pool/%s/cumulus-buffered/", "pebble"},
		{"4x-pool (buffered) vs bbolt", "4x-pool/%s/cumulus-buffered/", "bbolt"},
	}
	w := vg.Points(9)
	maxv := 1.0
	for i, s := range series {
		vals := make(plotter.Values, len(workloads))
		for j, wl := range workloads {
			vals[j] = rep.Ratios[fmt.Sprintf(s.prefix, wl)+s.peer]
			maxv = max(maxv, vals[j])
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = palette[i%len(palette)]
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(float64(i)-float64(len(series)-1)/2)
		p.Add(bars)
		p.Legend.Add(s.label, bars)
	}
	one, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: 1}, {X: float64(len(workloads)) - 0.5, Y: 1}})
	if err != nil {
		return err
	}
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
	p.Add(one)
	p.Legend.Top = true
	p.Y.Max = maxv * 1.15
	p.NominalX(workloads...)
	return p.Save(260*vg.Millimeter, 120*vg.Millimeter, filepath.Join(out, "storage-ratios.png"))
}
